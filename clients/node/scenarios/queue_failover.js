"use strict";
// A Node queue-mode consumer that goes on when its node dies, run by
// tests/integration/test_node_resume.py:
//
//   node scenarios/queue_failover.js --bootstrap A,B,C --topic T --group G
//       [--records 600] [--message-window 10] [--grant-delay-ms 20]
//       [--timeout-ms 60000]
//
// It subscribes on the first address in CONSUME_MODE_QUEUE to a topic that
// holds --records records with distinct values and acks each delivery,
// reading slowly so the test can kill its node half way. It ends once every
// record's ack was answered without a failure, and prints `progress` every
// 50 acks and the figures in a `done` event.
//
// At least once, as docs/groups.md states it: a record comes again after the
// move when its ack was not answered before the stream died (the new
// stream resends the ack; the record may be handed out again meanwhile), or
// when the leader change lost the record of its delivery (then its ack is
// refused UNKNOWN_ACK_ID and it comes again). Checked here: no record whose
// ack was answered OK is delivered again, and every redelivery carries a
// higher attempt than the delivery before it.

const assert = require("node:assert/strict");
const { grpc, loadWeir } = require("../lib/protos");
const { Clients } = require("../lib/calls");
const { QueueConsumer } = require("../lib/queue");
const { NodeRotation, seededRandom } = require("../lib/failover");
const { emit, runScenario } = require("./lines");

const PROGRESS_EVERY_ACKS = 50;
// Refusals of an ack that the move can cause; the record comes again.
const MOVE_REFUSALS = new Set(["UNKNOWN_ACK_ID", "NOT_LEADER"]);

async function main(flags) {
  const weir = loadWeir();
  const brokers = new Clients(weir.BrokerService, grpc.credentials.createInsecure());
  const addresses = flags.bootstrap.split(",");
  const rotation = new NodeRotation(addresses, { random: seededRandom(3) });
  const total = Number(flags.records);
  const acked = new Set();
  const attempts = new Map(); // value -> last delivery attempt seen
  const figures = { records: total, deliveries: 0, redeliveries: 0, refused_acks: {} };

  const consumer = new QueueConsumer({
    clientFor: brokers.get,
    rotation,
    topic: flags.topic,
    group: flags.group,
    start: "START_KIND_EARLIEST",
    messageWindow: Number(flags.messageWindow),
    byteWindow: 4096,
    grantDelayMs: Number(flags.grantDelayMs),
    onDelivery: (record, delivery) => {
      figures.deliveries += 1;
      ack(record.value.toString(), delivery).catch((error) => consumer.stream.fail(error));
    },
  });

  async function ack(value, delivery) {
    assert.ok(!acked.has(value), `${value} delivered again after its ack was answered`);
    const before = attempts.get(value);
    if (before !== undefined) {
      figures.redeliveries += 1;
      assert.ok(delivery.attempt > before, `${value}: attempt ${delivery.attempt} after ${before}`);
    }
    attempts.set(value, delivery.attempt);
    const failures = await consumer.ack([delivery.ackId]);
    for (const failure of failures) {
      assert.ok(MOVE_REFUSALS.has(failure.reason), `ack of ${value} refused: ${JSON.stringify(failure)}`);
      figures.refused_acks[failure.reason] = (figures.refused_acks[failure.reason] ?? 0) + 1;
    }
    if (failures.length === 0 && !acked.has(value)) {
      acked.add(value);
      if (acked.size % PROGRESS_EVERY_ACKS === 0) {
        emit("progress", { acked: acked.size, address: rotation.current() });
      }
      if (acked.size === total) {
        await consumer.close();
      }
    }
  }

  const stats = await consumer.run();
  brokers.close();
  emit("done", {
    ...figures,
    acked: acked.size,
    resent_acks: consumer.stats.resent_acks,
    streams: stats.streams,
    ends: stats.ends,
  });
}

runScenario("queue_failover", main, {
  bootstrap: "",
  topic: "",
  group: "",
  records: "600",
  messageWindow: "10",
  grantDelayMs: "20",
});
