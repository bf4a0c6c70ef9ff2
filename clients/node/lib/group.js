"use strict";
// A consumer-group member in stream mode (Kafka's subscribe()), written from
// broker.proto and docs/groups.md alone.
//
// The broker divides the topic's partitions among the group's open streams
// and tells each member its share with `Assignment` responses. A partition
// starts at the group's committed offset (else `start`); records of a
// partition come only after the assignment that starts it and none after the
// one that revokes it. On a revocation the member commits what it handed
// over of the revoked partitions, under that assignment's generation, waits
// for the CommitResult and then sends `AssignmentAck` with the generation,
// on the same stream only (an ack on a later stream would name a generation
// that stream was never sent: INVALID_ASSIGNMENT_ACK). A heartbeat goes out
// when nothing was written for a third of the session timeout.
//
// After a retriable end (lib/stream.js) it subscribes again with its
// member id and gets its partitions back at the group's committed offsets:
// records handed over but not committed come again (at least once; counted
// in stats.redelivered). SESSION_EXPIRED and MEMBER_REMOVED (ABORTED, but
// retriable) join again as a new member; MEMBER_REPLACED ends the run.

const { WeirCallError, streamError } = require("./errors");
const { ResumingStream } = require("./stream");

const COMMITS_INFLIGHT_MAX = 16;
const SESSION_TIMEOUT_MS_DEFAULT = 10_000;

class GroupMember {
  constructor({
    clientFor,
    rotation,
    topic,
    group,
    start = "START_KIND_EARLIEST",
    sessionTimeoutMs = SESSION_TIMEOUT_MS_DEFAULT,
    messageWindow,
    byteWindow,
    grantDelayMs = 0,
    onBatch,
    onAssignment = () => {},
    onStreamEnd = () => {},
  }) {
    this.topic = topic;
    this.group = group;
    this.start = start;
    this.sessionTimeoutMs = sessionTimeoutMs;
    this.onBatchTaken = onBatch;
    this.onAssignmentTold = onAssignment;
    this.onStreamEndTold = onStreamEnd;
    this.memberId = "";
    this.generation = 0;
    this.owned = new Set(); // partitions this stream delivers now
    this.positions = new Map(); // partition -> next offset to hand over
    this.committed = new Map(); // partition -> offset this member last committed
    this.highest = new Map(); // partition -> highest offset handed over + 1, across streams
    this.pendingCommits = new Map(); // commit id -> { resolve, reject }
    this.nextCommitId = 1;
    this.streamSeq = 0;
    this.stats = { assignments: 0, revocations: 0, commits: 0, heartbeats: 0, redelivered: 0, rejoins: 0 };
    this.stream = new ResumingStream({ clientFor, rotation, messageWindow, byteWindow, grantDelayMs, handler: this });
    this.heartbeatTimer = setInterval(() => this.heartbeatWhenIdle(), Math.floor(sessionTimeoutMs / 3));
  }

  run() {
    return this.stream.run().finally(() => clearInterval(this.heartbeatTimer));
  }

  // Commits what moved, then ends the stream, which leaves the group at once.
  async close() {
    try {
      await this.commit();
    } catch {
      // Left anyway: whoever gets the partitions starts at the last commit.
    }
    clearInterval(this.heartbeatTimer);
    return this.stream.close();
  }

  // Commits, for each owned partition that moved, the offset after the last
  // record handed over; resolves to the group's offsets the broker answered.
  commit() {
    const offsets = [...this.owned]
      .filter((p) => this.positions.get(p) !== this.committed.get(p))
      .map((partition) => ({ partition, offset: String(this.positions.get(partition)) }));
    return this.commitOffsets(offsets, this.generation);
  }

  commitOffsets(offsets, generation) {
    if (offsets.length === 0) {
      return Promise.resolve([]);
    }
    if (this.pendingCommits.size >= COMMITS_INFLIGHT_MAX) {
      return Promise.reject(new Error(`${COMMITS_INFLIGHT_MAX} commits already wait for their answer`));
    }
    const commitId = this.nextCommitId++;
    const written = this.stream.write({
      commit: { commit_id: String(commitId), offsets, generation: String(generation) },
    });
    if (!written) {
      return Promise.reject(new WeirCallError("commit", notConnected()));
    }
    return new Promise((resolve, reject) => {
      this.pendingCommits.set(commitId, {
        resolve: (result) => {
          for (const { partition, offset } of result.offsets) {
            if (offsets.some((o) => o.partition === partition)) {
              this.committed.set(partition, Number(offset));
            }
          }
          this.stats.commits += 1;
          resolve(result.offsets.map((o) => [o.partition, Number(o.offset)]));
        },
        reject,
      });
    });
  }

  heartbeatWhenIdle() {
    if (Date.now() - this.stream.lastWriteMs >= this.sessionTimeoutMs / 3 && this.stream.write({ heartbeat: {} })) {
      this.stats.heartbeats += 1;
    }
  }

  subscribe() {
    return {
      topic: this.topic,
      group: this.group,
      mode: "CONSUME_MODE_STREAM",
      member_id: this.memberId,
      start: { kind: this.start },
      session_timeout_ms: this.sessionTimeoutMs,
    };
  }

  onSubscribed() {
    this.streamSeq += 1;
  }

  onBatch(batch) {
    const { partition } = batch;
    if (!this.owned.has(partition)) {
      throw new Error(`a batch of partition ${partition}, which this member does not own`);
    }
    const base = Number(batch.base_offset);
    if (base !== this.positions.get(partition)) {
      throw new Error(`partition ${partition}: a batch at ${base}, the next record is ${this.positions.get(partition)}`);
    }
    const end = base + batch.records.length;
    this.stats.redelivered += Math.max(0, Math.min(end, this.highest.get(partition) ?? 0) - base);
    this.positions.set(partition, end);
    this.highest.set(partition, Math.max(end, this.highest.get(partition) ?? 0));
    this.onBatchTaken(batch, this);
  }

  onResponse(response) {
    if (response.kind === "assignment") {
      this.onAssignment(response.assignment);
    } else if (response.kind === "commit") {
      const result = response.commit;
      const pending = this.pendingCommits.get(Number(result.commit_id));
      if (pending === undefined) {
        throw new Error(`a CommitResult for commit ${result.commit_id}, which is not pending`);
      }
      this.pendingCommits.delete(Number(result.commit_id));
      if (result.error) {
        pending.reject(new WeirCallError("commit", streamError(result.error)));
      } else {
        pending.resolve(result);
      }
    } else {
      throw new Error(`unexpected consume response ${response.kind}`);
    }
  }

  onAssignment(assignment) {
    this.memberId = assignment.member_id;
    this.generation = Number(assignment.generation);
    this.stats.assignments += 1;
    const owned = new Set(assignment.partitions);
    const started = new Set();
    for (const { partition, offset } of assignment.started) {
      if (!owned.has(partition)) {
        throw new Error(`assignment ${this.generation} starts partition ${partition} it does not list`);
      }
      started.add(partition);
      this.positions.set(partition, Number(offset));
      this.committed.set(partition, Number(offset));
    }
    for (const partition of owned) {
      if (!this.owned.has(partition) && !started.has(partition)) {
        throw new Error(`assignment ${this.generation} gives partition ${partition} without a start`);
      }
    }
    const revoked = assignment.revoked.filter((p) => this.owned.has(p));
    this.owned = owned;
    this.onAssignmentTold(assignment, this);
    if (assignment.revoked.length > 0) {
      this.stats.revocations += 1;
      this.giveUp(revoked, this.generation);
    }
  }

  // Commit what was handed over of the revoked partitions, then acknowledge
  // the generation on this stream (even if the commit failed: the new owner
  // then starts at the last commit, and nobody waits for the timeout).
  giveUp(revoked, generation) {
    const seq = this.streamSeq;
    const offsets = revoked
      .filter((p) => this.positions.get(p) !== this.committed.get(p))
      .map((partition) => ({ partition, offset: String(this.positions.get(partition)) }));
    const ack = () => {
      if (this.streamSeq === seq) {
        this.stream.write({ assignment_ack: { generation: String(generation) } });
      }
    };
    this.commitOffsets(offsets, generation).then(ack, ack);
  }

  onStreamEnd(error) {
    this.onStreamEndTold(error, this);
    for (const pending of this.pendingCommits.values()) {
      pending.reject(new WeirCallError("commit", error ?? notConnected()));
    }
    this.pendingCommits.clear();
    this.owned = new Set();
    this.streamSeq += 1;
    if (error !== null && ["SESSION_EXPIRED", "MEMBER_REMOVED"].includes(error.reason)) {
      this.memberId = "";
      this.stats.rejoins += 1;
    }
  }
}

function notConnected() {
  return { code: 14, reason: "", domain: "", message: "no stream is open", metadata: {}, retriable: true };
}

module.exports = { GroupMember, COMMITS_INFLIGHT_MAX };
