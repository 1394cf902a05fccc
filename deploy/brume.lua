-- brume's config for every instance behind the load balancer
-- (deploy/haproxy.cfg): each instance's ports and data folder come from its
-- environment (deploy/a.env, deploy/b.env, through brume@.service); the rest
-- is the same everywhere. Rule state (once, throttle, state, dedupe marks,
-- timers and digests) is in Redis, shared; each instance keeps its own
-- journal and outbox, and delivers what it acknowledged.
listen = env("BRUME_LISTEN")
admin = env("BRUME_ADMIN")
data_dir = env("BRUME_DATA")
rules = "/etc/brume/rules"

state = {
  url = env("BRUME_REDIS"),
  -- password = env("REDIS_PASSWORD"),
  timeout = "2s",
}

sources = {
  -- dedupe: the org's and the site's copy of an event, posted to either
  -- instance, run the rules once.
  mist = { path = "/mist", secret = env("MIST_WEBHOOK_SECRET"), dedupe = "10m" },
}

targets = {
  secops = { kind = "slack", url = env("SLACK_WEBHOOK_URL") },
}
