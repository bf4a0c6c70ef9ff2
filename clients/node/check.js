"use strict";
// A Node.js user's program against a Weir cluster, run by
// tests/integration/test_node_client.py:
//
//   node check.js --bootstrap host:port,host:port,host:port [--records N] [--topic NAME]
//
// 1. creates a topic through AdminService (retrying what the trailer's
//    ErrorInfo says is retriable);
// 2. decodes refused calls: ErrorInfo from the grpc-status-details-bin
//    trailer (DescribeTopic, CreateTopic and Consume of a missing or taken
//    topic) and a weir.v1.Error inside a Produce stream (missing topic);
// 3. gets a producer id from InitProducer and produces N records with
//    acks ALL and per-partition sequences, mostly one record per request,
//    every tenth request five, over a Produce stream per node (so most
//    requests are forwarded to their leader);
// 4. resends a batch with its sequence (the original offsets come back), sends
//    a gap (OUT_OF_ORDER_SEQUENCE), and writes with a fenced epoch
//    (PRODUCER_FENCED);
// 5. probes byte credit one byte short of a record (CREDIT_TOO_SMALL with
//    the sizes we computed), then reads everything back with a small byte
//    window and checks that every record arrives exactly once, in offset
//    order per partition, as produced.
//
// Prints one JSON line of figures on success; exits 1 with the reason on any
// failure, 2 when the whole run exceeds --timeout-ms.

const assert = require("node:assert/strict");
const { grpc, loadWeir } = require("./lib/protos");
const { callError, streamError, WeirCallError } = require("./lib/errors");
const { sleep, unary, unaryRetrying, CALL_ATTEMPTS_MAX, CALL_BACKOFF_MS } = require("./lib/calls");
const { IdempotentProducer } = require("./lib/producer");
const { contentBytes, consumeWithCredit } = require("./lib/consumer");

const PARTITIONS = 3;
const RECORDS_UNACKED_MAX = 500;
const BYTE_WINDOW = 1024;
const MESSAGE_WINDOW = 500;

function parseArgs(argv) {
  const args = { records: 3000, topic: `node-check-${process.pid}`, timeoutMs: 90_000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === "--bootstrap") args.bootstrap = value.split(",");
    else if (flag === "--records") args.records = Number(value);
    else if (flag === "--topic") args.topic = value;
    else if (flag === "--timeout-ms") args.timeoutMs = Number(value);
    else throw new Error(`unknown flag ${flag}`);
  }
  assert.ok(args.bootstrap && args.bootstrap.length > 0, "--bootstrap is required");
  return args;
}

// Each phase's figures on stderr, so a failed run shows how far it got.
const progress = (phase, data) => console.error(`node client: ${phase} ${JSON.stringify(data)}`);

// The error a unary call must fail with.
async function refusal(client, method, request) {
  try {
    await unary(client, method, request);
  } catch (error) {
    if (error instanceof WeirCallError) return error.error;
    throw error;
  }
  throw new Error(`${method} ${JSON.stringify(request)} succeeded`);
}

// One request on its own Produce stream; resolves to its ProduceResponse.
function produceOnce(client, request) {
  return new Promise((resolve, reject) => {
    const call = client.Produce();
    const answers = [];
    call.on("data", (response) => answers.push(response));
    call.on("error", (err) => reject(new WeirCallError("produce", callError(err))));
    call.on("end", () => (answers.length === 1 ? resolve(answers[0]) : reject(new Error(`${answers.length} answers`))));
    call.write(request);
    call.end();
  });
}

// Resends while the in-stream error is retriable (an election, a forwarding hiccup).
async function produceOnceRetrying(client, request) {
  for (let attempt = 1; ; attempt += 1) {
    const response = await produceOnce(client, request);
    if (!response.error || !response.error.retriable || attempt >= CALL_ATTEMPTS_MAX) {
      return response;
    }
    await sleep(CALL_BACKOFF_MS);
  }
}

// A Consume stream's end status; the stream must fail.
function consumeRefusal(client, subscribe) {
  return new Promise((resolve, reject) => {
    const call = client.Consume();
    call.on("data", (response) => reject(new Error(`unexpected ${JSON.stringify(response)}`)));
    call.on("error", (err) => resolve(callError(err)));
    call.on("end", () => reject(new Error("consume of a missing topic ended OK")));
    call.write({ subscribe: { ...subscribe, credit: { messages: "1", bytes: "1" } } });
  });
}

// Record r of the run: some without a key, some with headers (one name not
// ASCII, so UTF-8 length matters), every 97th with no content at all.
function makeRecord(r) {
  if (r % 97 === 0) {
    return { value: Buffer.alloc(0), headers: {} };
  }
  const record = {
    value: Buffer.from(`r${r}:`.padEnd(20 + ((r * 37) % 180), ".")),
    headers: {},
  };
  if (r % 3 !== 0) {
    record.key = Buffer.from(`key-${r}`);
  }
  if (r % 97 === 50) {
    record.key = Buffer.alloc(0); // present but empty: not the same as absent
  }
  if (r % 4 === 1) {
    record.headers = { "trace-id": Buffer.from(`t-${r}`), "größe": Buffer.from("groß") };
  }
  return record;
}

// proto-loader marks a present optional field with its synthetic oneof: `_key`.
function sameRecord(got, want) {
  const empty = Buffer.alloc(0);
  return (
    (got._key === "key") === (want.key !== undefined) &&
    (got.key ?? empty).equals(want.key ?? empty) &&
    got.value.equals(want.value) &&
    Object.keys(got.headers).length === Object.keys(want.headers).length &&
    Object.entries(want.headers).every(([name, value]) => got.headers[name]?.equals(value))
  );
}

async function createTopic(admin, name, figures) {
  try {
    await unaryRetrying(admin, "CreateTopic", { name, partition_count: PARTITIONS, replication_factor: 3 });
  } catch (error) {
    // A create retried after an unknown outcome may find its own topic (docs/sdk.md).
    if (!(error instanceof WeirCallError) || error.error.reason !== "TOPIC_EXISTS") throw error;
  }
  figures.topic_created = true;
}

async function checkRefusals(admins, brokers, topic, figures) {
  const missing = `${topic}-missing`;
  const describe = await refusal(admins[1 % admins.length], "DescribeTopic", { name: missing });
  assert.equal(describe.code, grpc.status.NOT_FOUND);
  assert.deepEqual(
    [describe.reason, describe.domain, describe.metadata.retriable, describe.retriable],
    ["TOPIC_NOT_FOUND", "weir", "false", false],
  );
  const exists = await refusal(admins[2 % admins.length], "CreateTopic", { name: topic, partition_count: 1 });
  assert.deepEqual([exists.code, exists.reason, exists.retriable], [grpc.status.ALREADY_EXISTS, "TOPIC_EXISTS", false]);
  const consume = await consumeRefusal(brokers[0], { topic: missing });
  assert.deepEqual([consume.code, consume.reason, consume.retriable], [grpc.status.NOT_FOUND, "TOPIC_NOT_FOUND", false]);
  const produced = await produceOnce(brokers[1 % brokers.length], {
    request_id: "7", topic: missing, partition: 0, batch: { records: [makeRecord(1)] }, acks: "ACKS_ALL",
  });
  assert.ok(produced.error, "produce to a missing topic succeeded");
  const error = streamError(produced.error);
  assert.equal(String(produced.request_id), "7");
  assert.deepEqual([error.code, error.reason, error.retriable], [grpc.status.NOT_FOUND, "TOPIC_NOT_FOUND", false]);
  figures.refusals = {
    describe_missing: describe.reason,
    create_existing: exists.reason,
    consume_missing: consume.reason,
    produce_missing: error.reason,
  };
}

// Produce `count` records; returns expected[partition][offset] = record and the acked batches.
async function produceAll(producer, count, figures) {
  const expected = Array.from({ length: PARTITIONS }, () => []);
  const batches = [];
  const unacked = [];
  let request = 0;
  let multi = 0;
  for (let r = 0; r < count; request += 1) {
    const size = Math.min(request % 10 === 9 ? 5 : 1, count - r);
    multi += size > 1 ? 1 : 0;
    const records = Array.from({ length: size }, (_, i) => makeRecord(r + i));
    r += size;
    const partition = request % PARTITIONS;
    const sent = producer.send(partition, records).then((ack) => {
      assert.equal(ack.count, records.length);
      records.forEach((record, i) => {
        expected[partition][ack.baseOffset + i] = record;
      });
      batches.push({ ...ack, records });
      return records.length;
    });
    unacked.push({ sent, size });
    let waiting = unacked.reduce((sum, u) => sum + u.size, 0);
    while (waiting > RECORDS_UNACKED_MAX) {
      await unacked.shift().sent;
      waiting = unacked.reduce((sum, u) => sum + u.size, 0);
    }
  }
  await Promise.all(unacked.map((u) => u.sent));
  figures.produce = { records: count, requests: request, multi_record_requests: multi, ...producer.stats };
  return { expected, batches };
}

function producerRequest(identity, partition, firstSequence, records, requestId) {
  return {
    request_id: String(requestId),
    topic: identity.topic,
    partition,
    batch: { records },
    acks: "ACKS_ALL",
    producer_id: identity.producer_id,
    producer_epoch: identity.producer_epoch,
    first_sequence: firstSequence,
  };
}

async function checkIdempotence(brokers, identity, batches, expected, producerName, figures) {
  // The last batch of partition 0, resent with its sequence to another node: its original offsets.
  const last = batches
    .filter((b) => b.partition === 0)
    .reduce((a, b) => (b.firstSequence > a.firstSequence ? b : a));
  const nextSequence = last.firstSequence + last.count;
  const endOffset = expected[0].length;
  const retried = await produceOnceRetrying(
    brokers[2 % brokers.length],
    producerRequest(identity, 0, last.firstSequence, last.records, 101),
  );
  assert.equal(retried.error, null, JSON.stringify(retried.error));
  assert.deepEqual(
    [Number(retried.appends[0].base_offset), retried.appends[0].record_count],
    [last.baseOffset, last.count],
  );

  // A gap: refused, nothing written, the expected sequence named.
  const gap = await produceOnceRetrying(
    brokers[1 % brokers.length],
    producerRequest(identity, 0, nextSequence + 3, [makeRecord(5)], 102),
  );
  assert.ok(gap.error, "a sequence gap was accepted");
  const gapError = streamError(gap.error);
  assert.deepEqual(
    [gapError.code, gapError.reason, gapError.retriable, gapError.metadata.expected_sequence],
    [grpc.status.FAILED_PRECONDITION, "OUT_OF_ORDER_SEQUENCE", false, String(nextSequence)],
  );

  // The same name again: same id, next epoch; once it wrote to partition 1 the old epoch is fenced there.
  const successor = await unaryRetrying(brokers[brokers.length - 1], "InitProducer", { producer_name: producerName });
  assert.equal(String(successor.producer_id), String(identity.producer_id));
  assert.equal(successor.producer_epoch, identity.producer_epoch + 1);
  const successorIdentity = { ...identity, ...successor };
  const record = makeRecord(11);
  const written = await produceOnceRetrying(brokers[brokers.length - 1], producerRequest(successorIdentity, 1, 0, [record], 103));
  assert.equal(written.error, null, JSON.stringify(written.error));
  expected[1][Number(written.appends[0].base_offset)] = record;
  const oldSequence = batches.filter((b) => b.partition === 1).reduce((n, b) => Math.max(n, b.firstSequence + b.count), 0);
  const fenced = await produceOnceRetrying(brokers[1 % brokers.length], producerRequest(identity, 1, oldSequence, [record], 104));
  assert.ok(fenced.error, "a fenced epoch was accepted");
  const fencedError = streamError(fenced.error);
  assert.deepEqual([fencedError.reason, fencedError.retriable], ["PRODUCER_FENCED", false]);
  assert.equal(expected[0].length, endOffset, "partition 0 grew");
  figures.idempotence = {
    producer_id: String(identity.producer_id),
    retry_offsets_match: true,
    gap: gapError.reason,
    expected_sequence: Number(gapError.metadata.expected_sequence),
    successor_epoch: successor.producer_epoch,
    fenced: fencedError.reason,
  };
}

// One byte of credit short of a record: a CREDIT_TOO_SMALL notice with our numbers, then the record.
function probeCredit(broker, topic, expected, figures) {
  const offset = expected[0].findIndex((record) => contentBytes(record) > 1);
  const size = contentBytes(expected[0][offset]);
  return new Promise((resolve, reject) => {
    const call = broker.Consume();
    const fail = (error) => {
      call.cancel();
      reject(error);
    };
    let noticed = false;
    call.on("error", (err) => reject(new WeirCallError("credit probe", callError(err))));
    call.on("end", () => (noticed ? resolve() : reject(new Error("credit probe ended early"))));
    call.on("data", (response) => {
      try {
        if (response.kind === "notice") {
          const notice = streamError(response.notice);
          assert.equal(notice.reason, "CREDIT_TOO_SMALL");
          const m = notice.metadata;
          assert.deepEqual(
            [m.partition, m.offset, m.record_bytes, m.credit_bytes, m.needed_bytes],
            ["0", String(offset), String(size), String(size - 1), "1"],
          );
          noticed = true;
          call.write({ credit: { messages: "0", bytes: "1" } });
        } else if (response.kind === "batch") {
          assert.ok(noticed, "a record came before the notice");
          const { records } = response.batch;
          assert.deepEqual([Number(response.batch.base_offset), records.length], [offset, 1]);
          assert.ok(sameRecord(records[0], expected[0][offset]));
          figures.credit_probe = { offset, record_bytes: size };
          call.end();
        } else if (response.kind !== "subscribed") {
          throw new Error(`unexpected ${response.kind}`);
        }
      } catch (error) {
        fail(error);
      }
    });
    call.write({
      subscribe: {
        topic,
        partitions: [0],
        offsets: { 0: String(offset) },
        credit: { messages: "1", bytes: String(size - 1) },
      },
    });
  });
}

async function consumeAll(broker, topic, expected, figures) {
  const next = Array(PARTITIONS).fill(0);
  const total = expected.reduce((sum, records) => sum + records.length, 0);
  let seen = 0;
  for (const records of expected) {
    assert.ok(records.every((r) => r !== undefined), "a hole in the acknowledged offsets");
  }
  const stats = await consumeWithCredit({
    client: broker,
    subscribe: { topic, group: "node-check", start: { kind: "START_KIND_EARLIEST" } },
    messageWindow: MESSAGE_WINDOW,
    byteWindow: BYTE_WINDOW,
    onBatch: (batch) => {
      const { partition } = batch;
      assert.equal(Number(batch.base_offset), next[partition], `partition ${partition} skipped or repeated`);
      for (const record of batch.records) {
        const want = expected[partition][next[partition]];
        assert.ok(want !== undefined, `partition ${partition}: offset ${next[partition]} was never produced`);
        assert.ok(sameRecord(record, want), `partition ${partition} offset ${next[partition]} differs`);
        next[partition] += 1;
        seen += 1;
      }
    },
    onNotice: (notice) => {
      const partition = Number(notice.metadata.partition);
      const offset = Number(notice.metadata.offset);
      assert.equal(offset, next[partition]);
      assert.equal(Number(notice.metadata.record_bytes), contentBytes(expected[partition][offset]));
    },
    isDone: () => seen === total,
    commitOffsets: () => next.map((offset, partition) => ({ partition, offset: String(offset) })),
  });
  assert.deepEqual(stats.committed, next.map((offset, partition) => [partition, offset]));
  figures.consume = {
    records: stats.records,
    per_partition: next,
    batches: stats.batches,
    bytes: stats.bytes,
    byte_window: BYTE_WINDOW,
    message_window: MESSAGE_WINDOW,
    credit_grants: stats.grants,
    credit_too_small_notices: stats.notices,
  };
}

async function main() {
  const started = Date.now();
  const args = parseArgs(process.argv.slice(2));
  const watchdog = setTimeout(() => {
    console.error(`node client: not done within ${args.timeoutMs} ms`);
    process.exit(2);
  }, args.timeoutMs);
  const weir = loadWeir();
  const credentials = grpc.credentials.createInsecure();
  const admins = args.bootstrap.map((a) => new weir.AdminService(a, credentials));
  const brokers = args.bootstrap.map((a) => new weir.BrokerService(a, credentials));
  const figures = { topic: args.topic, nodes: args.bootstrap.length };

  await createTopic(admins[0], args.topic, figures);
  await checkRefusals(admins, brokers, args.topic, figures);
  progress("refusals decoded", figures.refusals);

  const producerName = `${args.topic}-producer`;
  const init = await unaryRetrying(brokers[1 % brokers.length], "InitProducer", { producer_name: producerName });
  const identity = { topic: args.topic, producer_id: init.producer_id, producer_epoch: init.producer_epoch };
  const producer = new IdempotentProducer({
    clients: new Map(args.bootstrap.map((address, i) => [address, brokers[i]])),
    topic: args.topic,
    producerId: identity.producer_id,
    producerEpoch: identity.producer_epoch,
    // Partition p goes to node p: any node accepts it and forwards it to the leader.
    route: (partition) => args.bootstrap[partition % args.bootstrap.length],
  });
  const { expected, batches } = await produceAll(producer, args.records, figures);
  await producer.close();
  progress("produced", figures.produce);
  await checkIdempotence(brokers, identity, batches, expected, producerName, figures);
  progress("idempotence", figures.idempotence);
  await probeCredit(brokers[2 % brokers.length], args.topic, expected, figures);
  progress("credit probe", figures.credit_probe);
  await consumeAll(brokers[brokers.length - 1], args.topic, expected, figures);

  for (const client of [...admins, ...brokers]) client.close();
  clearTimeout(watchdog);
  figures.elapsed_ms = Date.now() - started;
  console.log(JSON.stringify(figures));
}

main().catch((error) => {
  console.error(`node client failed: ${error.stack || error}`);
  process.exit(1);
});
