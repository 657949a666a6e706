"""Moved to `testkit.redis_server` (shared with bench/); this name stays for tests
written against the old path."""

from testkit.redis_server import RedisServer as RedisServer
from testkit.redis_server import redis_server as redis_server
