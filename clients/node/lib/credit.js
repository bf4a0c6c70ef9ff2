"use strict";
// Byte and message credit as broker.proto's `Credit` defines it, counted
// from the decoded records, so the client's books agree with the broker's to
// the byte.

// A record's cost in byte credit: its content size. Header names count as
// UTF-8; an absent key counts 0; the timestamp and the framing do not count.
function contentBytes(record) {
  let size = (record.key ? record.key.length : 0) + record.value.length;
  for (const [name, value] of Object.entries(record.headers)) {
    size += Buffer.byteLength(name, "utf8") + value.length;
  }
  return size;
}

// The credit of one stream: what was granted, what arrived, and what the
// client took and has not given back yet. The broker never sends beyond the
// grant (checked per batch); the client grants back once half of either
// window is taken.
class CreditBooks {
  constructor(messageWindow, byteWindow) {
    this.window = { messages: messageWindow, bytes: byteWindow };
    this.granted = { messages: messageWindow, bytes: byteWindow };
    this.received = { messages: 0, bytes: 0 };
    this.taken = { messages: 0, bytes: 0 };
  }

  // The topic's largest record must always fit, or its partition would
  // stall: widen the byte window to it. Answers the extra bytes to grant.
  widenTo(recordBytesMax) {
    const extra = Math.max(0, recordBytesMax - this.window.bytes);
    this.window.bytes += extra;
    this.granted.bytes += extra;
    return extra;
  }

  // A batch arrived; throws if it passes the credit granted.
  receive(records) {
    const bytes = records.reduce((sum, record) => sum + contentBytes(record), 0);
    this.received.messages += records.length;
    this.received.bytes += bytes;
    if (this.received.messages > this.granted.messages || this.received.bytes > this.granted.bytes) {
      throw new Error(
        `the broker sent beyond the credit granted: received ${JSON.stringify(this.received)}, ` +
          `granted ${JSON.stringify(this.granted)} (content sizes disagree?)`,
      );
    }
    return bytes;
  }

  // The application took these records: their credit may go back.
  take(messages, bytes) {
    this.taken.messages += messages;
    this.taken.bytes += bytes;
  }

  // The Credit to send now, or null while less than half of both windows was taken.
  due() {
    const { taken, window } = this;
    if (taken.messages < window.messages / 2 && taken.bytes < window.bytes / 2) {
      return null;
    }
    const credit = { ...taken };
    this.granted.messages += credit.messages;
    this.granted.bytes += credit.bytes;
    this.taken = { messages: 0, bytes: 0 };
    return { messages: String(credit.messages), bytes: String(credit.bytes) };
  }
}

module.exports = { contentBytes, CreditBooks };
