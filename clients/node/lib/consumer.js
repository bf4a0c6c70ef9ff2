"use strict";
// Reading a topic over BrokerService/Consume with message and byte credit,
// computed from the decoded records as docs/sdk.md and broker.proto's
// `Credit` define it.
//
// The client keeps a byte window far smaller than the data, grants credit back
// only once less than half of either window is left, and so runs the broker
// out of byte credit again and again. Its own books must then agree with the
// broker's to the byte: the broker never sends beyond what was granted
// (checked per batch), and each CREDIT_TOO_SMALL notice states credit left
// that, added to the bytes received, equals a running total of our grants.

const { callError, streamError, WeirCallError } = require("./errors");
const { contentBytes } = require("./credit");
const { ResumingStream } = require("./stream");

// Subscribe with `subscribe` (a weir.v1.Subscribe without credit) on `client`
// and feed every batch to onBatch(batch) until isDone(); then commit
// `commitOffsets()` when the subscription has a group, and end the stream.
// onNotice(notice) sees every notice after the credit check.
function consumeWithCredit({
  client,
  subscribe,
  messageWindow,
  byteWindow,
  onBatch,
  onNotice,
  isDone,
  commitOffsets,
}) {
  const stats = { batches: 0, records: 0, bytes: 0, grants: 0, notices: 0, committed: null };
  const granted = { messages: messageWindow, bytes: byteWindow };
  const received = { messages: 0, bytes: 0 };
  // Every total of byte credit granted so far: the broker's view is one of them.
  const byteGrantTotals = new Set([byteWindow]);
  let finishing = false;

  return new Promise((resolve, reject) => {
    const call = client.Consume();
    const fail = (error) => {
      call.cancel();
      reject(error);
    };
    call.on("error", (err) => reject(new WeirCallError("consume", callError(err))));
    call.on("end", () => (finishing ? resolve(stats) : reject(new Error("consume stream ended early"))));

    const finish = () => {
      finishing = true;
      if (subscribe.group) {
        call.write({ commit: { commit_id: "1", offsets: commitOffsets() } });
      } else {
        call.end();
      }
    };

    call.on("data", (response) => {
      try {
        switch (response.kind) {
          case "subscribed":
            if (isDone()) {
              finish();
            }
            break;
          case "batch": {
            const { records } = response.batch;
            const bytes = records.reduce((sum, record) => sum + contentBytes(record), 0);
            received.messages += records.length;
            received.bytes += bytes;
            if (received.messages > granted.messages || received.bytes > granted.bytes) {
              throw new Error(
                `the broker sent beyond the credit granted: received ${JSON.stringify(received)}, ` +
                  `granted ${JSON.stringify(granted)} (content sizes disagree?)`,
              );
            }
            stats.batches += 1;
            stats.records += records.length;
            stats.bytes += bytes;
            onBatch(response.batch);
            if (isDone()) {
              if (!finishing) {
                finish();
              }
              break;
            }
            const messagesLeft = granted.messages - received.messages;
            const bytesLeft = granted.bytes - received.bytes;
            if (messagesLeft < messageWindow / 2 || bytesLeft < byteWindow / 2) {
              const credit = { messages: messageWindow - messagesLeft, bytes: byteWindow - bytesLeft };
              granted.messages += credit.messages;
              granted.bytes += credit.bytes;
              byteGrantTotals.add(granted.bytes);
              stats.grants += 1;
              call.write({ credit: { messages: String(credit.messages), bytes: String(credit.bytes) } });
            }
            break;
          }
          case "notice": {
            const notice = streamError(response.notice);
            stats.notices += 1;
            if (notice.reason !== "CREDIT_TOO_SMALL") {
              throw new Error(`unexpected notice ${JSON.stringify(notice)}`);
            }
            const brokerGranted = Number(notice.metadata.credit_bytes) + received.bytes;
            if (!byteGrantTotals.has(brokerGranted)) {
              throw new Error(
                `notice says ${notice.metadata.credit_bytes} bytes of credit left after ${received.bytes} ` +
                  `received: ${brokerGranted} granted is none of our totals`,
              );
            }
            onNotice(notice);
            break;
          }
          case "commit": {
            const result = response.commit;
            if (result.error) {
              throw new WeirCallError("commit", streamError(result.error));
            }
            stats.committed = result.offsets.map((o) => [o.partition, Number(o.offset)]);
            call.end();
            break;
          }
          default:
            throw new Error(`unexpected consume response ${JSON.stringify(response)}`);
        }
      } catch (error) {
        fail(error);
      }
    });

    call.write({
      subscribe: {
        ...subscribe,
        credit: { messages: String(messageWindow), bytes: String(byteWindow) },
      },
    });
  });
}

// An assign-mode consumer that survives its node: it reads `partitions`
// (all when empty) and, when a stream ends with a retriable error (the node
// died or stopped, UNAVAILABLE, NOT_LEADER, SHUTTING_DOWN), subscribes again
// on the next node with explicit offsets, for every partition the offset
// after the last record it handed to onBatch (or, for a partition nothing
// was handed from yet, where the first subscription started it). So it never
// skips a record and never hands one over twice, across any number of moves:
// a batch that does not start at the partition's position fails the run.
class ResumingConsumer {
  constructor({
    clientFor,
    rotation,
    topic,
    partitions = [],
    group = "",
    start = "START_KIND_EARLIEST",
    messageWindow,
    byteWindow,
    grantDelayMs = 0,
    onBatch,
    onSubscribed = () => {},
  }) {
    this.subscription = { topic, partitions, group, start: { kind: start } };
    this.onBatchTaken = onBatch;
    this.onSubscribedTold = onSubscribed;
    this.positions = new Map(); // partition -> the next offset to hand over
    this.stream = new ResumingStream({
      clientFor,
      rotation,
      messageWindow,
      byteWindow,
      grantDelayMs,
      handler: this,
    });
  }

  run() {
    return this.stream.run();
  }

  close() {
    return this.stream.close();
  }

  subscribe() {
    const offsets = {};
    for (const [partition, offset] of this.positions) {
      offsets[partition] = String(offset);
    }
    return { ...this.subscription, offsets };
  }

  onSubscribed(subscribed) {
    for (const { partition, offset } of subscribed.partitions) {
      const position = this.positions.get(partition);
      if (position === undefined) {
        this.positions.set(partition, Number(offset));
      } else if (position !== Number(offset)) {
        throw new Error(`partition ${partition} starts at ${offset}, asked for ${position}`);
      }
    }
    this.onSubscribedTold(subscribed);
  }

  onBatch(batch) {
    const { partition } = batch;
    const position = this.positions.get(partition);
    const base = Number(batch.base_offset);
    if (base !== position) {
      throw new Error(`partition ${partition}: a batch at ${base}, the next record is ${position}`);
    }
    // Handed over: the position moves first, so onBatch sees where it ends.
    this.positions.set(partition, position + batch.records.length);
    this.onBatchTaken(batch);
  }

  onResponse(response) {
    throw new Error(`unexpected consume response ${response.kind}`);
  }

  onStreamEnd() {}
}

module.exports = { contentBytes, consumeWithCredit, ResumingConsumer };
