"""The caller's side: context, ids, spans and logs, built and pushed into the ring."""
