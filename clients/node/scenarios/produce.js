"use strict";
// Producing a scenario's records with the Node client's own idempotent
// producer (lib/producer.js): record i of `values` to partition i mod
// `partitions`, acks ALL, over a Produce stream per node.

const { unaryRetrying } = require("../lib/calls");
const { IdempotentProducer } = require("../lib/producer");

// Resolves to [{ partition, offset, value }] once every record is committed.
async function produceValues({ brokers, addresses, topic, partitions, values }) {
  const init = await unaryRetrying(brokers.get(addresses[0]), "InitProducer", {});
  const producer = new IdempotentProducer({
    clients: new Map(addresses.map((address) => [address, brokers.get(address)])),
    topic,
    producerId: init.producer_id,
    producerEpoch: init.producer_epoch,
    route: (partition) => addresses[partition % addresses.length],
  });
  try {
    const sent = values.map((value, i) =>
      producer.send(i % partitions, [{ value: Buffer.from(value), headers: {} }]).then((answer) => ({
        partition: answer.partition,
        offset: answer.baseOffset,
        value,
      })),
    );
    return await Promise.all(sent);
  } finally {
    await producer.close();
  }
}

module.exports = { produceValues };
