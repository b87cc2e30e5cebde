-- wrk script of benchmarks/load.py and benchmarks/http.py: mixed reads and
-- writes over many sessions.
--
-- Arguments (after "--" on the wrk command line):
--   1. a file of "index<TAB>cookie" lines, one per pre-created session;
--   2. the share of writes, e.g. 0.2;
--   3. the number of wrk threads;
--   4. the path of a read (default /read), sent as PATH?i=INDEX;
--   5. the path of a write (default /write).
--
-- Several indexes may share one cookie (http.py's shared-write: index i is
-- then a key of the one session, not a session); what follows says
-- "session" for an index.
--
-- Session i belongs to thread i % threads, and a thread never sends a request
-- for a session that has one in flight: it takes sessions from a queue of
-- idle ones and puts a session back when its response arrives (the app
-- echoes the session index in X-Idx). So no two requests of one session
-- ever overlap and every write must land: the counter of session i must end
-- equal to its writes answered 200, plus one if a write of it was still in
-- flight when wrk stopped (its outcome is unknown). Overlapping increments
-- of one session would be read-modify-write races, which the session layer
-- does not merge, so they are avoided, not tested.
--
-- request() is also called once outside the run (wrk checks the request in
-- thread 0's state before starting): that request is never sent, and shows
-- up as one "in flight" request that never completes.
--
-- done() prints machine-readable "TS ..." lines for load.py, among them the
-- count of every status answered (non-2xx ones are what the benchmarks check).

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread runs its own copy of this script).
local cookies = {}      -- session index -> Cookie header value
local queue = {}        -- idle session indexes, first in first out
local head, tail = 1, 0
local write_share = 0.2
local read_path, write_path = "/read", "/write"
sent_writes = {}        -- session index -> writes sent (read by done())
ok_writes = {}          -- session index -> writes answered 200
pending = {}            -- session index -> "write"/"read" sent, not answered
ok_reads = 0
bad = 0                 -- responses with a status other than 200
statuses = {}           -- status -> responses, every response counted
no_idle = 0             -- requests sent as /ping because no session was idle

function init(args)
   local path = args[1]
   write_share = tonumber(args[2])
   local nthreads = tonumber(args[3])
   read_path = args[4] or read_path
   write_path = args[5] or write_path
   math.randomseed(7919 * (tid + 1))
   local f = assert(io.open(path, "r"))
   for line in f:lines() do
      local index, cookie = line:match("^(%d+)\t(.*)$")
      index = tonumber(index)
      if index and index % nthreads == tid then
         cookies[index] = cookie
         tail = tail + 1
         queue[tail] = index
      end
   end
   f:close()
end

function request()
   if head > tail then
      no_idle = no_idle + 1
      return wrk.format("GET", "/ping")
   end
   local index = queue[head]
   queue[head] = nil
   head = head + 1
   local path
   if math.random() < write_share then
      path = write_path .. "?i=" .. index
      sent_writes[index] = (sent_writes[index] or 0) + 1
      pending[index] = "write"
   else
      path = read_path .. "?i=" .. index
      pending[index] = "read"
   end
   return wrk.format("GET", path, { Cookie = cookies[index] })
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   local index = tonumber(headers["X-Idx"] or headers["x-idx"] or "")
   if index == nil or cookies[index] == nil then
      return  -- /ping
   end
   -- What was sent for this session: it has no other request in flight.
   local op = pending[index]
   pending[index] = nil
   if status == 200 then
      if op == "write" then
         ok_writes[index] = (ok_writes[index] or 0) + 1
      else
         ok_reads = ok_reads + 1
      end
   else
      bad = bad + 1
   end
   tail = tail + 1
   queue[tail] = index
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("TS requests %d\n", summary.requests))
   io.write(string.format("TS duration_us %d\n", summary.duration))
   io.write(string.format("TS bytes %d\n", summary.bytes))
   io.write(string.format("TS errors_connect %d\n", e.connect))
   io.write(string.format("TS errors_read %d\n", e.read))
   io.write(string.format("TS errors_write %d\n", e.write))
   io.write(string.format("TS errors_status %d\n", e.status))
   io.write(string.format("TS errors_timeout %d\n", e.timeout))
   io.write(string.format("TS latency_mean_us %f\n", latency.mean))
   io.write(string.format("TS latency_max_us %d\n", latency.max))
   for _, p in ipairs({ 50, 90, 99, 99.9 }) do
      io.write(string.format("TS latency_p%s_us %d\n", tostring(p), latency:percentile(p)))
   end
   for _, thread in ipairs(threads) do
      io.write(string.format("TS ok_reads %d\n", thread:get("ok_reads")))
      io.write(string.format("TS bad %d\n", thread:get("bad")))
      io.write(string.format("TS no_idle %d\n", thread:get("no_idle")))
      for index, n in pairs(thread:get("sent_writes")) do
         io.write(string.format("TS sent_write %d %d\n", index, n))
      end
      for index, n in pairs(thread:get("ok_writes")) do
         io.write(string.format("TS ok_write %d %d\n", index, n))
      end
      for code, n in pairs(thread:get("statuses")) do
         io.write(string.format("TS status %d %d\n", code, n))
      end
      for index, op in pairs(thread:get("pending")) do
         io.write(string.format("TS pending_%s %d 1\n", op, index))
      end
   end
end
