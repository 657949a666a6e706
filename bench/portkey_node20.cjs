// Preloaded into Portkey's gateway by bench/run (`node --require`). Portkey 1.15.2 builds
// a streamed answer as `new Response(stream, upstreamResponse)` and then adds headers to
// it; under Node 20 the Response class @hono/node-server installs keeps the fetched
// response's immutable headers for that, so every streamed answer fails with
// "TypeError: immutable". This wraps the class it installs as the global Response
// so that such an init's headers are copied into a fresh, mutable set; nothing else
// changes.
"use strict";
const wrap = (Base) => {
  const Native = Base;
  return class Response extends Base {
    constructor(body, init) {
      if (init instanceof Native || (init && typeof init.headers === "object" && init.body !== undefined)) {
        init = { status: init.status, statusText: init.statusText, headers: new Headers(init.headers) };
      }
      super(body, init);
    }
  };
};
// @hono/node-server installs its class with Object.defineProperty(global, "Response", ...).
const define = Object.defineProperty;
Object.defineProperty = function (target, name, descriptor) {
  if (target === globalThis && name === "Response" && descriptor && typeof descriptor.value === "function") {
    descriptor = { ...descriptor, value: wrap(descriptor.value) };
  }
  return define(target, name, descriptor);
};
