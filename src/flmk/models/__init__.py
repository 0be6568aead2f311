"""Networks and losses: one module per paper, shared blocks and heads."""
