"""The atrace collector: an aiohttp service that ingests atrace batches and OTLP into PostgreSQL,
answers queries and streams a live tail. ``atrace serve`` runs it; ``make_app`` builds it."""
