-- A generic JSON webhook: POSTs the message itself (or message.raw as is).
-- With `secret` set, requests are signed as Standard Webhooks do: the
-- webhook-id header stays the same across retries (it is the delivery's
-- key), webhook-timestamp and webhook-signature are made at each attempt.
local t = require "brume.target"

local M = {
  max_age = "24h",
  signs = true,
  options = {
    url = { "url", required = true, secret = true }, -- URLs often carry a token
    secret = { "string", secret = true }, -- "whsec_<base64>" or raw bytes
    headers = { "table", secret = true },
    method = { "string", default = "POST" },
  },
}

function M.check(o)
  if o.secret and o.secret:sub(1, 6) == "whsec_" then
    local key = brume.base64.decode(o.secret:sub(7))
    if not key or #key == 0 then
      return "secret: after whsec_ comes the base64 of the key (Standard Webhooks)"
    end
  end
end

function M.request(target, msg, ctx)
  local body = msg.raw and t.raw(msg) or t.json(msg)
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(target.headers or {}) do headers[k] = v end
  return {
    method = target.method,
    url = target.url,
    headers = headers,
    body = body,
    sign = target.secret and "standard-webhooks" or nil,
  }
end

return M
