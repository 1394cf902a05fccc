-- Kafka: each message is produced to a topic by an idempotent producer
-- (librdkafka, in brume's outbox): the value is the message as JSON (or
-- message.raw as is), the key a field of the message, a template, or else
-- its dedup_key or the event's id. Messages with the same key go out one
-- at a time, oldest first, so they keep their order in the partition the
-- key picks. A delivery is done when the brokers acknowledged it (acks=all);
-- a broker that is down, a leader that moved or a timeout is tried again,
-- a refusal that retrying cannot mend (too large, not authorized) is dead.
local t = require "brume.target"

local M = {
  max_age = "24h",
  options = {
    -- Messages in flight at once (different keys: a key's go one at a time).
    concurrency = { "integer", default = 64, min = 1, max = 1000 },
    brokers = { "list" }, -- "host:9092", or a list of them
    topic = { "string", required = true }, -- a name, or a template: "mist.{topic}"
    key = { "string" }, -- a field path ("fields.mac") or a template ("{fields.site}")
    tls = { "settings", secret = { "key_password" } }, -- true, or { ca, cert, key, key_password }
    sasl = { "table", secret = { "password" } }, -- { mechanism, username, password }
    -- Any other librdkafka producer property, as a string.
    properties = { "table", secret = { "sasl.password", "ssl.key.password",
                                       "ssl.keystore.password", "sasl.oauthbearer.client.secret" } },
  },
}

local mechanisms = { PLAIN = true, ["SCRAM-SHA-256"] = true, ["SCRAM-SHA-512"] = true }
local tls_fields = { ca = "ssl.ca.location", cert = "ssl.certificate.location",
                     key = "ssl.key.location", key_password = "ssl.key.password" }
-- What brume decides, so a property may not: the delivery guarantees hang on them.
local fixed = { ["enable.idempotence"] = "is always true", acks = "is always all",
                ["transactional.id"] = "is not supported (the producer is idempotent)",
                ["enable.gapless.guarantee"] = "is not supported" }

local function topic_problem(topic)
  if #topic == 0 or #topic > 249 or not topic:match("^[%w%._%-]+$") or topic == "."
      or topic == ".." then
    return ("'%s' is not a Kafka topic (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"):format(topic)
  end
end

function M.check(o)
  local p = o.properties or {}
  if not o.brokers and not p["bootstrap.servers"] and not p["test.mock.num.brokers"] then
    return "needs brokers (\"host:9092\" or a list)", "kind"
  end
  for name, why in pairs(fixed) do
    if p[name] ~= nil then return ("%s %s"):format(name, why), "properties" end
  end
  local problem = o.topic:find("[{}]") and t.template_problem(o.topic) or
                  (not o.topic:find("{", 1, true) and topic_problem(o.topic))
  if problem then return problem, "topic" end
  if o.key then
    problem = t.key_problem(o.key)
    if problem then return problem, "key" end
  end
  if o.sasl then
    for k in pairs(o.sasl) do
      if k ~= "mechanism" and k ~= "username" and k ~= "password" then
        return ("unknown field '%s' (mechanism, username, password)"):format(k), "sasl"
      end
    end
    if not mechanisms[o.sasl.mechanism or ""] then
      return "mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", "sasl"
    end
    if not o.sasl.username or not o.sasl.password then
      return "needs username and password", "sasl"
    end
  end
  if type(o.tls) == "table" then
    for k in pairs(o.tls) do
      if not tls_fields[k] then
        return ("unknown field '%s' (ca, cert, key, key_password)"):format(k), "tls"
      end
    end
  end
end

-- librdkafka's properties for the producer (brume's outbox makes it).
function M.settings(o)
  local s = { ["client.id"] = "brume", ["message.timeout.ms"] = tostring(math.floor(o.timeout * 1000)) }
  for k, v in pairs(o.properties or {}) do s[k] = v end
  if o.brokers then s["bootstrap.servers"] = table.concat(o.brokers, ",") end
  local tls = o.tls == true or type(o.tls) == "table"
  if o.sasl then
    s["security.protocol"] = tls and "sasl_ssl" or "sasl_plaintext"
    s["sasl.mechanisms"] = o.sasl.mechanism
    s["sasl.username"] = o.sasl.username
    s["sasl.password"] = o.sasl.password
  elseif tls then
    s["security.protocol"] = "ssl"
  end
  if type(o.tls) == "table" then
    for k, v in pairs(o.tls) do s[tls_fields[k]] = v end
  end
  return s
end

function M.request(target, msg, ctx)
  local value = msg.raw and t.raw(msg) or t.json(msg)
  local topic = target.topic
  if topic:find("{", 1, true) then
    topic = t.expand(topic, msg, ctx, "kafka topic")
    local problem = topic_problem(topic)
    if problem then error("kafka topic: " .. problem, 0) end
  end
  local key = t.message_key(target.key, msg, ctx, "kafka key")
  local headers = { ["brume-rule"] = ctx.rule, ["brume-topic"] = ctx.topic,
                    ["brume-event"] = ctx.event }
  return {
    method = "PRODUCE",
    url = "kafka:" .. topic,
    headers = headers,
    body = value,
    order = key,
    show = { kafka = { topic = topic, key = key, headers = headers, value = value } },
  }
end

return M
