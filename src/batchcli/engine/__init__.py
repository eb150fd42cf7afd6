"""The execution engine: scheduler, KV block pool, model runner and the loop that drives them."""
