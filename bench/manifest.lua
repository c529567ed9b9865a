-- wrk script: GET manifests, rotating over a list of paths, with the OCI Accept header
-- (Distribution 404s OCI manifests without it) and an optional Authorization header.
-- Only for GET: wrk 4.1 cannot do HEAD (it waits for the Content-Length body that a HEAD
-- response never has: "0 requests in 2.00s"); httpload.py measures HEAD instead.
-- usage: wrk -t2 -c128 -d10s --latency -s manifest.lua http://HOST:PORT -- METHOD PATHS_FILE [AUTH_HEADER_VALUE]
local paths = {}
local method = "GET"
local headers = {}
local idx = 0
local thread_no = 0

function setup(thread)
  thread:set("tid", thread_no)
  thread_no = thread_no + 1
end

function init(args)
  method = args[1] or "GET"
  local f = assert(io.open(args[2], "r"))
  for line in f:lines() do
    if line ~= "" then paths[#paths + 1] = line end
  end
  f:close()
  headers["Accept"] = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, " ..
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"
  if args[3] and args[3] ~= "" then headers["Authorization"] = args[3] end
  idx = ((tid or 0) * 7919) % #paths
end

function request()
  idx = idx % #paths + 1
  return wrk.format(method, paths[idx], headers)
end
