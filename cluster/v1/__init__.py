"""Generated from proto/weir/cluster/v1 by tools/genproto.py; do not edit."""
