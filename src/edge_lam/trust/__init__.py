"""Authenticating edge_lam's control plane: Ed25519 keys per host, signatures with a signer name and stamp, and
the receiver's checks (known signer, valid signature, fresh stamp, the right identity). No rclpy here."""
