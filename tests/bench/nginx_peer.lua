-- The benchmark's peer: what brume's light path does, as an nginx location in
-- ngx_http_lua (LuaJIT). tests/bench/bench.py writes the nginx.conf that
-- loads it, init(secret) once and handle() for each request:
--
--   - POST only (405), X-Mist-Signature-v2 must be the hex HMAC-SHA256 of the
--     raw body under the secret, either case, compared in constant time
--     (libcrypto through the FFI: HMAC, CRYPTO_memcmp), else 401;
--   - the body decoded by lua-cjson: an object with a string `topic` and
--     `events` an array of objects, else 400;
--   - for topic "alarms", the light rule (tests/bench/rules-light/light.lua)
--     on each event with a small ctx; then 200 "ok".
local ffi = require "ffi"
local bit = require "bit"
local cjson = require "cjson.safe"

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
]]

local ok, crypto = pcall(ffi.load, "crypto")
if not ok then crypto = ffi.load("libcrypto.so.3") end

local sha256 = crypto.EVP_sha256()
local mac = ffi.new("unsigned char[32]")
local mac_len = ffi.new("unsigned int[1]")
local hex = ffi.new("char[64]")
local digits = ffi.new("char[17]", "0123456789abcdef")
local secret

-- The same function as light.lua's on_event, with cjson's encoder.
local function on_event(ev, ctx)
  local msg = cjson.encode({ title = "Rogue AP", site = ev.site_id, type = ev.type,
                             count = ev.count, org = ev.org_id })
end

local function signed(body, sig)
  if type(sig) ~= "string" or #sig ~= 64 then return false end
  crypto.HMAC(sha256, secret, #secret, body, #body, mac, mac_len)
  for i = 0, 31 do
    hex[2 * i] = digits[bit.rshift(mac[i], 4)]
    hex[2 * i + 1] = digits[bit.band(mac[i], 15)]
  end
  return crypto.CRYPTO_memcmp(hex, sig:lower(), 64) == 0
end

local function refuse(status, reason)
  ngx.status = status
  ngx.say(reason)
  return ngx.exit(status)
end

local M = {}

function M.init(s)
  secret = s
end

function M.handle()
  if ngx.req.get_method() ~= "POST" then
    ngx.header["Allow"] = "POST"
    return refuse(405, "method not allowed")
  end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then return refuse(413, "body not in memory") end
  if not signed(body, ngx.var.http_x_mist_signature_v2) then
    return refuse(401, "bad signature")
  end
  local doc = cjson.decode(body)
  if type(doc) ~= "table" or type(doc.topic) ~= "string" then
    return refuse(400, "not a JSON object with a string topic")
  end
  local events = doc.events
  if type(events) ~= "table" then return refuse(400, "events is not an array") end
  for i = 1, #events do
    if type(events[i]) ~= "table" then return refuse(400, "an event is not an object") end
  end
  if doc.topic == "alarms" then
    local ctx = { source = "mist", topic = doc.topic, at = ngx.now() }
    for i = 1, #events do
      ctx.index = i
      on_event(events[i], ctx)
    end
  end
  ngx.say("ok")
end

return M
