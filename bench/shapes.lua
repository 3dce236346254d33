-- wrk script for bench/proxy.sh's shapes: SHAPE_BODY (bytes) makes every request a POST
-- of that many bytes; SHAPE_HTTP10=1 sends HTTP/1.0 requests without keep-alive (wrk
-- itself always writes HTTP/1.1, so the request is written whole here). The request is
-- built in `init`, once wrk has set its Host header (Node answers 400 without one).
local body_len = tonumber(os.getenv("SHAPE_BODY") or "0")
local http10 = os.getenv("SHAPE_HTTP10") == "1"
local path = os.getenv("SHAPE_PATH") or "/"
local req

init = function(args)
  if http10 then
    req = "GET " .. path .. " HTTP/1.0\r\nHost: " .. (wrk.headers["Host"] or "127.0.0.1") .. "\r\n\r\n"
  elseif body_len > 0 then
    wrk.method = "POST"
    wrk.body = string.rep("x", body_len)
    wrk.headers["Content-Type"] = "application/octet-stream"
    req = wrk.format(nil, path)
  else
    req = wrk.format(nil, path)
  end
end

request = function()
  return req
end
