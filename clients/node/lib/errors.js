"use strict";
// Reading Weir's errors as a client in any language meets them: a call that
// ends carries a google.rpc.Status with an ErrorInfo in the
// grpc-status-details-bin trailer; a request refused inside a stream that goes
// on carries a weir.v1.Error in its response. Both become one plain object.

const { loadGoogleRpc } = require("./protos");

const ERROR_INFO_TYPE_URL = "type.googleapis.com/google.rpc.ErrorInfo";
const { Status, ErrorInfo } = loadGoogleRpc();

// The ErrorInfo of a failed call, or null when the status has none (gRPC's
// own statuses: a dead connection, a client deadline).
function trailerError(err) {
  const values = err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
  if (values.length === 0) {
    return null;
  }
  const status = Status.decode(values[0]);
  if (status.code !== err.code) {
    throw new Error(`trailer status ${status.code} differs from the call's ${err.code}`);
  }
  const any = status.details.find((detail) => detail.type_url === ERROR_INFO_TYPE_URL);
  if (any === undefined) {
    return null;
  }
  const info = ErrorInfo.decode(any.value);
  const metadata = { ...info.metadata };
  return {
    code: status.code,
    reason: info.reason,
    domain: info.domain,
    message: status.message,
    metadata,
    retriable: metadata.retriable === "true",
  };
}

// A gRPC call's failure as { code, reason, retriable, ... }. Without an
// ErrorInfo, UNAVAILABLE is retriable (the connection broke) and nothing else.
function callError(err) {
  const info = trailerError(err);
  if (info !== null) {
    return info;
  }
  return {
    code: err.code,
    reason: "",
    domain: "",
    message: err.details || err.message,
    metadata: {},
    retriable: err.code === 14, // UNAVAILABLE
  };
}

// A weir.v1.Error from a stream response, in the same shape.
function streamError(error) {
  return {
    code: error.code,
    reason: error.reason,
    domain: "weir",
    message: error.message,
    metadata: { ...error.metadata },
    retriable: error.retriable,
  };
}

class WeirCallError extends Error {
  constructor(what, error) {
    super(`${what}: ${error.reason || `code ${error.code}`}: ${error.message}`);
    this.error = error;
  }
}

module.exports = { trailerError, callError, streamError, WeirCallError };
