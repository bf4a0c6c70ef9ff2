"use strict";
// One Node stream-mode group member that goes on when its node dies, run by
// tests/integration/test_node_resume.py:
//
//   node scenarios/member.js --bootstrap A,B,C --topic T --group G
//       [--commit-every 100] [--message-window 10] [--grant-delay-ms 20]
//       [--timeout-ms 60000]
//
// It joins on the first address, reads slowly and commits after every
// --commit-every records it handed over (one commit in flight at most).
// Events: `assignment`, `progress` every 50 records, `done`. A stdin line
// {"end_offsets": [...]} says where the topic ends; it commits and leaves
// once it handed over every record below them.
//
// When its stream ends (the node was killed), it notes per partition the
// offset it last committed (as the broker answered) and its position; the
// member then subscribes again with its member id and the broker starts each
// partition at the group's committed offset: the records between that and
// the position come a second time. The figures list those `resumes`, and
// per partition how many offsets were never handed over (skipped) and how
// many twice (duplicates).

const { grpc, loadWeir } = require("../lib/protos");
const { Clients } = require("../lib/calls");
const { GroupMember } = require("../lib/group");
const { NodeRotation, seededRandom } = require("../lib/failover");
const { emit, onCommands, runScenario } = require("./lines");

const PROGRESS_EVERY_RECORDS = 50;

async function main(flags) {
  const weir = loadWeir();
  const brokers = new Clients(weir.BrokerService, grpc.credentials.createInsecure());
  const rotation = new NodeRotation(flags.bootstrap.split(","), { random: seededRandom(7) });
  const handed = new Map(); // partition -> Map(offset -> times)
  const ends = []; // per stream end: { partition: { committed, position } }
  const resumes = []; // per partition started on a later stream: { partition, committed, position, started }
  const commitEvery = Number(flags.commitEvery);
  let records = 0;
  let sinceCommit = 0;
  let committing = false;
  let endOffsets = null;
  let closing = false;

  const member = new GroupMember({
    clientFor: brokers.get,
    rotation,
    topic: flags.topic,
    group: flags.group,
    start: "START_KIND_EARLIEST",
    messageWindow: Number(flags.messageWindow),
    byteWindow: 4096,
    grantDelayMs: Number(flags.grantDelayMs),
    onAssignment: (assignment) => {
      const last = ends[ends.length - 1];
      for (const { partition, offset } of assignment.started) {
        if (last !== undefined && last[partition] !== undefined && !last[partition].resumed) {
          last[partition].resumed = true;
          resumes.push({ partition, ...last[partition], started: Number(offset) });
        }
      }
      emit("assignment", { generation: Number(assignment.generation), partitions: assignment.partitions, address: rotation.current() });
      setImmediate(closeWhenDone);
    },
    onStreamEnd: (error, self) => {
      if (error === null) return;
      const noted = {};
      for (const partition of self.owned) {
        noted[partition] = { committed: self.committed.get(partition), position: self.positions.get(partition) };
      }
      ends.push(noted);
    },
    onBatch: (batch) => {
      const { partition } = batch;
      if (!handed.has(partition)) handed.set(partition, new Map());
      const offsets = handed.get(partition);
      batch.records.forEach((_, i) => {
        const offset = Number(batch.base_offset) + i;
        offsets.set(offset, (offsets.get(offset) ?? 0) + 1);
      });
      const before = records;
      records += batch.records.length;
      sinceCommit += batch.records.length;
      if (Math.floor(before / PROGRESS_EVERY_RECORDS) !== Math.floor(records / PROGRESS_EVERY_RECORDS)) {
        emit("progress", { records, address: rotation.current() });
      }
      if (sinceCommit >= commitEvery && !committing) {
        committing = true;
        sinceCommit = 0;
        member.commit().catch(() => {}).finally(() => (committing = false));
      }
      closeWhenDone();
    },
  });

  function closeWhenDone() {
    if (endOffsets === null || closing) return;
    if (endOffsets.every((end, p) => end === 0 || (member.owned.has(p) && member.positions.get(p) >= end))) {
      closing = true;
      member.close();
    }
  }
  const commands = onCommands(
    (command) => {
      endOffsets = command.end_offsets.map(Number);
      closeWhenDone();
    },
    (error) => member.stream.fail(error),
  );
  const stats = await member.run();
  commands.close();
  brokers.close();
  const perPartition = [...handed.keys()].sort((x, y) => x - y).map((partition) => {
    const offsets = handed.get(partition);
    const end = Math.max(...offsets.keys()) + 1;
    let skipped = 0;
    for (let offset = 0; offset < end; offset += 1) if (!offsets.has(offset)) skipped += 1;
    const duplicates = [...offsets.values()].reduce((sum, times) => sum + times - 1, 0);
    return { partition, end, skipped, duplicates };
  });
  emit("done", {
    records,
    per_partition: perPartition,
    resumes,
    redelivered: member.stats.redelivered,
    commits: member.stats.commits,
    streams: stats.streams,
    ends: stats.ends,
  });
}

runScenario("member", main, {
  bootstrap: "",
  topic: "",
  group: "",
  commitEvery: "100",
  messageWindow: "10",
  grantDelayMs: "20",
});
