"""Generated gRPC/protobuf code for Concordia's wire contract (source: proto/federation/wire/)."""
