"use strict";
// A Node queue-mode consumer acks, nacks and extends, run by
// tests/integration/test_node_groups.py:
//
//   node scenarios/queue.js --bootstrap A,B,C --topic T --group G
//       [--partitions 2] [--records 60] [--timeout-ms 60000]
//
// It subscribes in CONSUME_MODE_QUEUE, then produces --records records
// ("q-<i>", record i to partition i mod --partitions). On its first
// delivery, record i with i % 3 == 0 is nacked without a delay (it must come
// back with attempt 2 after the topic's backoff, then it is acked); i % 3 ==
// 1 gets its deadline extended, then is acked; the rest are acked at once.
// Along the way it sends the refusals a client can meet and records what
// came back: an ack id never delivered (garbage) alone and next to a real
// one, a nack of a record already acked, an extension outside the allowed
// range, and an empty ack (refused by the client before anything is sent).
// It ends when every record was acked, and prints the figures as a `done`
// event.

const assert = require("node:assert/strict");
const { grpc, loadWeir } = require("../lib/protos");
const { Clients } = require("../lib/calls");
const { QueueConsumer } = require("../lib/queue");
const { NodeRotation, seededRandom } = require("../lib/failover");
const { emit, runScenario } = require("./lines");
const { produceValues } = require("./produce");

const GARBAGE_ACK_ID = Buffer.alloc(25, 7);
const EXTENSION_MS = 5000;

async function main(flags) {
  const weir = loadWeir();
  const brokers = new Clients(weir.BrokerService, grpc.credentials.createInsecure());
  const addresses = flags.bootstrap.split(",");
  const total = Number(flags.records);
  const values = Array.from({ length: total }, (_, i) => `q-${i}`);
  const figures = { records: total, deliveries: 0, acked: 0, nacked: 0, extended: 0, redelivered: [], refusals: {}, nack_answer_ms_max: 0 };
  const acked = new Map(); // value -> acks answered without a failure
  const nackedAt = new Map(); // value -> when its nack was sent
  const tasks = [];
  let firstAcked = null; // { value, ackId } of a record acked, for the refusals
  let refused = false;

  const consumer = new QueueConsumer({
    clientFor: brokers.get,
    rotation: new NodeRotation(addresses, { random: seededRandom(1) }),
    topic: flags.topic,
    group: flags.group,
    start: "START_KIND_EARLIEST",
    ackDeadlineMs: 30_000,
    messageWindow: 20,
    byteWindow: 4096,
    onDelivery: (record, delivery) => {
      figures.deliveries += 1;
      tasks.push(settle(record.value.toString(), delivery).catch((error) => consumer.stream.fail(error)));
    },
  });

  async function ackOnce(value, ackId) {
    assert.deepEqual(await consumer.ack([ackId]), [], `ack of ${value} refused`);
    acked.set(value, (acked.get(value) ?? 0) + 1);
    figures.acked += 1;
    if (firstAcked === null) {
      firstAcked = { value, ackId };
    }
    if (acked.size === total) {
      await refusals();
      await consumer.close();
    }
  }

  async function settle(value, delivery) {
    const i = Number(value.split("-")[1]);
    assert.ok(!acked.has(value), `${value} delivered again after its ack was answered`);
    if (delivery.attempt > 1) {
      const afterMs = Date.now() - nackedAt.get(value);
      figures.redelivered.push({ value, attempt: delivery.attempt, after_ms: afterMs });
      await ackOnce(value, delivery.ackId);
    } else if (i % 3 === 0) {
      const sentAt = Date.now();
      nackedAt.set(value, sentAt);
      assert.deepEqual(await consumer.nack([delivery.ackId], { error: "try again" }), []);
      figures.nack_answer_ms_max = Math.max(figures.nack_answer_ms_max, Date.now() - sentAt);
      figures.nacked += 1;
    } else if (i % 3 === 1) {
      assert.deepEqual(await consumer.extend([delivery.ackId], EXTENSION_MS), []);
      figures.extended += 1;
      await ackOnce(value, delivery.ackId);
    } else {
      await ackOnce(value, delivery.ackId);
    }
  }

  // Each refusal changes nothing, and the stream goes on.
  async function refusals() {
    if (refused) {
      return;
    }
    refused = true;
    const { value, ackId } = firstAcked;
    const pick = (f) => ({ index: f.index, code: f.code, reason: f.reason, retriable: f.retriable });
    figures.refusals.garbage = (await consumer.ack([GARBAGE_ACK_ID])).map(pick);
    figures.refusals.mixed = (await consumer.ack([ackId, GARBAGE_ACK_ID])).map(pick);
    figures.refusals.nack_acked = (await consumer.nack([ackId], { delayMs: 0 })).map(pick);
    figures.refusals.extend_too_short = (await consumer.extend([ackId, GARBAGE_ACK_ID], 10)).map(pick);
    try {
      await consumer.ack([]);
      figures.refusals.empty = "sent";
    } catch (error) {
      figures.refusals.empty = error.name;
    }
    figures.refusals.acked_value = value;
  }

  const running = consumer.run();
  const produced = await produceValues({ brokers, addresses, topic: flags.topic, partitions: Number(flags.partitions), values });
  emit("produced", { records: produced.length });
  const stats = await running;
  for (const task of tasks) await task;
  brokers.close();
  figures.acked_once = [...acked.values()].every((count) => count === 1) && acked.size === total;
  figures.streams = stats.streams;
  figures.requests = consumer.stats.requests;
  emit("done", figures);
}

runScenario("queue", main, { bootstrap: "", topic: "", group: "", partitions: "2", records: "60" });
