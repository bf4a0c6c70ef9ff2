"use strict";
// Unary calls as promises, and the retry a client in any language writes:
// again while the trailer's ErrorInfo says retriable. Shared by check.js and
// the scenarios.

const { callError, WeirCallError } = require("./errors");

const CALL_TIMEOUT_MS = 10_000;
const CALL_ATTEMPTS_MAX = 30;
const CALL_BACKOFF_MS = 200;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A unary call as a promise; a failure becomes a WeirCallError with the trailer's ErrorInfo.
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + CALL_TIMEOUT_MS }, (err, response) =>
      err ? reject(new WeirCallError(method, callError(err))) : resolve(response),
    );
  });
}

// Retries a unary call while its error is retriable, as the trailer says.
async function unaryRetrying(client, method, request) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await unary(client, method, request);
    } catch (error) {
      if (!(error instanceof WeirCallError) || !error.error.retriable || attempt >= CALL_ATTEMPTS_MAX) {
        throw error;
      }
      await sleep(CALL_BACKOFF_MS);
    }
  }
}

// One client (one channel) per address, made when first asked for: the
// addresses a NOT_LEADER names join the bootstrap list's.
class Clients {
  constructor(Service, credentials) {
    this.Service = Service;
    this.credentials = credentials;
    this.clients = new Map();
    this.get = this.get.bind(this);
  }

  get(address) {
    let client = this.clients.get(address);
    if (client === undefined) {
      client = new this.Service(address, this.credentials);
      this.clients.set(address, client);
    }
    return client;
  }

  close() {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}

module.exports = { sleep, unary, unaryRetrying, Clients, CALL_ATTEMPTS_MAX, CALL_BACKOFF_MS };
