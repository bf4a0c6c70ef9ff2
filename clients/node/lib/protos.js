"use strict";
// Loads Weir's API the way docs/errors.md tells a Node.js user to: the
// services from proto/ with @grpc/proto-loader at run time (no generated
// files), and google.rpc.Status and ErrorInfo from the .proto files that the
// npm package google-proto-files ships, to decode a status trailer.

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

// The repository's proto/ folder, two levels above clients/node.
const PROTO_DIR = path.resolve(__dirname, "..", "..", "..", "proto");

// keepCase: field names as in the .proto files; longs as strings so that a
// uint64 producer id never loses precision; oneofs: a `kind` property names
// the member of a oneof that is set; defaults: absent maps are {}, absent
// bytes are empty buffers.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

function loadWeir() {
  const definition = protoLoader.loadSync(
    ["weir/v1/admin.proto", "weir/v1/broker.proto"],
    LOADER_OPTIONS,
  );
  return grpc.loadPackageDefinition(definition).weir.v1;
}

function loadGoogleRpc() {
  const googleProtos = path.dirname(require.resolve("google-proto-files/package.json"));
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(googleProtos, target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
  return {
    Status: root.lookupType("google.rpc.Status"),
    ErrorInfo: root.lookupType("google.rpc.ErrorInfo"),
  };
}

module.exports = { grpc, loadWeir, loadGoogleRpc, PROTO_DIR };
