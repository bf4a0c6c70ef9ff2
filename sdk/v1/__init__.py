"""Generated from proto/weir/v1 by tools/genproto.py; do not edit."""
