"""The fault suite (`bench/faults`): failure scenarios under concurrent load against real
processes on loopback, one module per group (upstream, store, callers, process,
secrets), a runner and a report writer."""
