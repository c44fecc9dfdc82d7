//! The fabnode node.
