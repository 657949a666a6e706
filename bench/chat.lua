-- wrk script: POST chat completions built from a body template.
--
--   wrk ... -s bench/chat.lua URL -- TEMPLATE MODE NONCE [BEARER [HEADERS]]
--
-- TEMPLATE is a JSON body with @@PROMPT@@ where the user's text goes. MODE "unique"
-- sends a prompt no earlier request had (the nonce, the thread and a counter), so no
-- cache can answer it; "repeat" sends one prompt over and over. BEARER, when given, is
-- sent as `Authorization: Bearer BEARER`; HEADERS, lines of `name: value`, are sent too
-- (Portkey's gateway reads its upstream from headers). At the end one line `WRK_JSON {...}` carries
-- the figures (latencies in microseconds) for the harness to read.

local threads = {}
local counter = 0
local template, mode, nonce

-- Runs in the main state once per thread: each thread's `thread_id` global (a global,
-- not a local, since `thread:set` writes the thread state's globals) keeps prompts apart.
function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

local function prompt(text)
  -- gsub's replacement treats "%" specially; the harness's prompts have none.
  return (template:gsub("@@PROMPT@@", text))
end

function init(args)
  template, mode, nonce = args[1], args[2], args[3]
  wrk.method = "POST"
  wrk.headers["content-type"] = "application/json"
  if args[4] ~= nil and args[4] ~= "" then
    wrk.headers["authorization"] = "Bearer " .. args[4]
  end
  if args[5] ~= nil then
    for name, value in args[5]:gmatch("([^:\n]+):%s*([^\n]*)") do
      wrk.headers[name] = value
    end
  end
  if mode == "repeat" then
    wrk.body = prompt("I was charged twice this month, ticket " .. nonce .. ".")
  end
end

function request()
  if mode == "repeat" then
    return wrk.format()
  end
  counter = counter + 1
  local text = string.format("I was charged twice this month, ticket %s-%d-%d.", nonce, thread_id or 0, counter)
  return wrk.format(nil, nil, nil, prompt(text))
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect, errors.read, errors.write, errors.timeout, errors.status))
end
