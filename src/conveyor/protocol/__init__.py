"""What the server and its clients share: the envelope, error codes, ids, the task status machine."""
