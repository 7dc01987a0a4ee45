"""The gRPC edge: servicer, proto <-> domain conversion, interceptors (errors -> status codes, limits),
authentication and TLS, decoding problems, and the typed client. The only hand-written code that
touches ``server/_gen`` besides the log's record codec."""
