"use strict";
// An assign-mode Node consumer that goes on when its node dies, run by
// tests/integration/test_node_resume.py:
//
//   node scenarios/resume.js --bootstrap A,B,C --topic T [--message-window 20]
//       [--byte-window 4096] [--grant-delay-ms 10] [--seed 1] [--timeout-ms 60000]
//
// It subscribes on the first address (the test puts the node it will kill
// there) to every partition from the earliest record and reads slowly (a
// small window, credit given back after --grant-delay-ms), so the test can
// stop the node mid-read. Events on stdout: `subscribed`, `progress` every
// 50 records, `done` with the figures. A stdin line {"end_offsets": [...]}
// says where the topic ends: it finishes once it handed over every record
// below those offsets. The consumer itself fails the run on a skipped or
// repeated offset; the figures carry a digest of each partition's
// (offset, value) sequence for the test to compare with the log.

const crypto = require("node:crypto");
const { grpc, loadWeir } = require("../lib/protos");
const { Clients } = require("../lib/calls");
const { ResumingConsumer } = require("../lib/consumer");
const { NodeRotation, seededRandom } = require("../lib/failover");
const { emit, onCommands, runScenario } = require("./lines");

const PROGRESS_EVERY_RECORDS = 50;

async function main(flags) {
  const weir = loadWeir();
  const brokers = new Clients(weir.BrokerService, grpc.credentials.createInsecure());
  const rotation = new NodeRotation(flags.bootstrap.split(","), { random: seededRandom(Number(flags.seed)) });
  const hashes = new Map(); // partition -> sha256 of (offset, len, value) in order
  const counts = new Map();
  let records = 0;
  let endOffsets = null;

  const consumer = new ResumingConsumer({
    clientFor: brokers.get,
    rotation,
    topic: flags.topic,
    start: "START_KIND_EARLIEST",
    messageWindow: Number(flags.messageWindow),
    byteWindow: Number(flags.byteWindow),
    grantDelayMs: Number(flags.grantDelayMs),
    onBatch: (batch) => {
      const { partition } = batch;
      if (!hashes.has(partition)) {
        hashes.set(partition, crypto.createHash("sha256"));
        counts.set(partition, 0);
      }
      const hash = hashes.get(partition);
      batch.records.forEach((record, i) => {
        const offset = Buffer.alloc(12);
        offset.writeBigUInt64BE(BigInt(Number(batch.base_offset) + i));
        offset.writeUInt32BE(record.value.length, 8);
        hash.update(offset).update(record.value);
      });
      counts.set(partition, counts.get(partition) + batch.records.length);
      const before = records;
      records += batch.records.length;
      if (Math.floor(before / PROGRESS_EVERY_RECORDS) !== Math.floor(records / PROGRESS_EVERY_RECORDS)) {
        emit("progress", { records, address: rotation.current(), streams: consumer.stream.stats.streams });
      }
      closeWhenDone();
    },
    onSubscribed: (subscribed) =>
      emit("subscribed", { address: rotation.current(), partitions: subscribed.partitions.length }),
  });

  function closeWhenDone() {
    if (endOffsets === null) {
      return;
    }
    const reached = endOffsets.every((end, partition) => (consumer.positions.get(partition) ?? 0) >= end);
    if (reached) {
      consumer.close();
    }
  }

  const commands = onCommands(
    (command) => {
      endOffsets = command.end_offsets.map(Number);
      closeWhenDone();
    },
    (error) => consumer.stream.fail(error),
  );
  const stats = await consumer.run();
  commands.close();
  brokers.close();
  const partitions = [...consumer.positions.keys()].sort((a, b) => a - b);
  const empty = () => crypto.createHash("sha256");
  emit("done", {
    records,
    per_partition: partitions.map((p) => counts.get(p) ?? 0),
    positions: partitions.map((p) => consumer.positions.get(p)),
    digests: partitions.map((p) => (hashes.get(p) ?? empty()).digest("hex").slice(0, 16)),
    streams: stats.streams,
    resubscribes: stats.resubscribes,
    ends: stats.ends,
    notices: stats.notices,
    grants: stats.grants,
  });
}

runScenario("resume", main, {
  bootstrap: "",
  topic: "",
  messageWindow: "20",
  byteWindow: "4096",
  grantDelayMs: "10",
  seed: "1",
});
