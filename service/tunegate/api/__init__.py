"""HTTP shapes: request bodies, response bodies, SSE framing and error answers."""
