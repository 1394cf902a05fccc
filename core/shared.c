#include "shared.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define MARKER_TTL 86400 /* seconds a commit's marker is kept, unless deleted */
#define MAX_STALE  64    /* answered markers one commit deletes, at most */
#define PUSH_CHUNK 500   /* items one RPUSH takes (Lua's unpack has a limit) */

/*
 * The commit. KEYS: the marker, the version counter, the due set, then
 * for change i its hash (at 2 + 2i) and its items' list (3 + 2i). ARGV:
 * now, the marker's TTL, the number of changes, the number of answered
 * markers to delete and their names, then for each change: its member
 * (the state's key), its flags, the version it saw, its value, expires,
 * due, the number of items it adds and the items.
 *
 * flags: 1 read, 2 what it read was live (of that version), 4 written,
 * 8 deleted, 16 a timer's or digest's key (a member of the due set), 32 a
 * digest (with an item list), 64 a digest opened anew (its list replaced).
 */
static const char commit_lua[] =
    "local now = tonumber(ARGV[1])\n"
    "for j = 5, 4 + tonumber(ARGV[4]) do redis.call('DEL', ARGV[j]) end\n"
    "local done = redis.call('GET', KEYS[1])\n"
    "if done then return {'applied', done} end\n"
    "local function bit(f, b) return math.floor(f / b) % 2 == 1 end\n"
    "local n, m = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local ch, a = {}, 5 + m\n"
    "for i = 1, n do\n"
    "  local c = { member = ARGV[a], flags = tonumber(ARGV[a + 1]), ver = ARGV[a + 2],\n"
    "              value = ARGV[a + 3], x = ARGV[a + 4], d = ARGV[a + 5],\n"
    "              ni = tonumber(ARGV[a + 6]), at = a + 7 }\n"
    "  a = a + 7 + c.ni\n"
    "  ch[i] = c\n"
    "end\n"
    "local bad = {}\n"
    "for i = 1, n do\n"
    "  local c = ch[i]\n"
    "  if bit(c.flags, 1) then\n"
    "    local f = redis.call('HMGET', KEYS[2 + 2 * i], 'n', 'x')\n"
    "    local live = false\n"
    "    if f[1] then\n"
    "      local x = tonumber(f[2]) or 0\n"
    "      live = x == 0 or x > now\n"
    "    end\n"
    "    local ok\n"
    "    if bit(c.flags, 2) then ok = live and f[1] == c.ver else ok = not live end\n"
    "    if not ok then bad[#bad + 1] = i end\n"
    "  end\n"
    "end\n"
    "if #bad > 0 then\n"
    "  local out = {'conflict'}\n"
    "  for _, i in ipairs(bad) do\n"
    "    local f = redis.call('HMGET', KEYS[2 + 2 * i], 'v', 'x', 'd', 'n')\n"
    "    local items = {}\n"
    "    if f[1] and bit(ch[i].flags, 32) then\n"
    "      items = redis.call('LRANGE', KEYS[3 + 2 * i], 0, -1)\n"
    "    end\n"
    "    out[#out + 1] = {i, f[1] or false, f[2] or '0', f[3] or '0', f[4] or '0', items}\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "local vers = {}\n"
    "for i = 1, n do\n"
    "  local c, v = ch[i], 0\n"
    "  local h, l = KEYS[2 + 2 * i], KEYS[3 + 2 * i]\n"
    "  if bit(c.flags, 4) and bit(c.flags, 8) then\n"
    "    redis.call('DEL', h)\n"
    "    if bit(c.flags, 32) then redis.call('DEL', l) end\n"
    "    if bit(c.flags, 16) then redis.call('ZREM', KEYS[3], c.member) end\n"
    "  elseif bit(c.flags, 4) then\n"
    "    v = redis.call('INCR', KEYS[2])\n"
    "    redis.call('HSET', h, 'v', c.value, 'x', c.x, 'd', c.d, 'n', v)\n"
    "    local x, d = tonumber(c.x), tonumber(c.d)\n"
    "    if x > 0 then redis.call('PEXPIREAT', h, math.ceil(x * 1000))\n"
    "    else redis.call('PERSIST', h) end\n"
    "    if bit(c.flags, 16) then\n"
    "      if d > 0 then redis.call('ZADD', KEYS[3], d, c.member)\n"
    "      else redis.call('ZREM', KEYS[3], c.member) end\n"
    "    end\n"
    "    if bit(c.flags, 32) then\n"
    "      if bit(c.flags, 64) then redis.call('DEL', l) end\n"
    "      for k = c.at, c.at + c.ni - 1, 500 do\n"
    "        redis.call('RPUSH', l, unpack(ARGV, k, math.min(k + 499, c.at + c.ni - 1)))\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  vers[i] = v\n"
    "end\n"
    "local list = table.concat(vers, ',')\n"
    "redis.call('SET', KEYS[1], list, 'EX', ARGV[2])\n"
    "return {'ok', list}\n";

/*
 * The undo of a refused group. KEYS: the version counter, the due set,
 * then each change's hash and list as above. ARGV: the number of changes,
 * then for each: its member, its flags (16 and 32 as above; 1 it held a
 * value, 2 it was a digest, 4 the same digest: items were only appended),
 * the version the commit gave it (0: deleted), what it held before (value,
 * expires, due), how many items it had, and those items unless the same
 * digest. A key someone changed since is left as it is.
 */
static const char undo_lua[] =
    "local function bit(f, b) return math.floor(f / b) % 2 == 1 end\n"
    "local n, a = tonumber(ARGV[1]), 2\n"
    "for i = 1, n do\n"
    "  local member, flags, ours = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]\n"
    "  local value, x, d = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]\n"
    "  local ni, at = tonumber(ARGV[a + 6]), a + 7\n"
    "  local given = bit(flags, 4) and 0 or ni\n"
    "  a = at + given\n"
    "  local h, l = KEYS[1 + 2 * i], KEYS[2 + 2 * i]\n"
    "  local cur = redis.call('HGET', h, 'n')\n"
    "  if (ours == '0' and not cur) or cur == ours then\n"
    "    if bit(flags, 1) then\n"
    "      local v = redis.call('INCR', KEYS[1])\n"
    "      redis.call('HSET', h, 'v', value, 'x', x, 'd', d, 'n', v)\n"
    "      if tonumber(x) > 0 then redis.call('PEXPIREAT', h, math.ceil(tonumber(x) * 1000))\n"
    "      else redis.call('PERSIST', h) end\n"
    "      if bit(flags, 16) and tonumber(d) > 0 then redis.call('ZADD', KEYS[2], d, member) end\n"
    "    else\n"
    "      redis.call('DEL', h)\n"
    "      if bit(flags, 16) then redis.call('ZREM', KEYS[2], member) end\n"
    "    end\n"
    "    if bit(flags, 32) then\n"
    "      if bit(flags, 4) and ni > 0 then redis.call('LTRIM', l, 0, ni - 1)\n"
    "      else\n"
    "        redis.call('DEL', l)\n"
    "        for k = at, at + given - 1, 500 do\n"
    "          redis.call('RPUSH', l, unpack(ARGV, k, math.min(k + 499, at + given - 1)))\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return 'ok'\n";

/*
 * The claim of due timers and digests. KEYS: the due set. ARGV: now, the
 * lease, the most to claim, the prefix of hashes, of lists. Answers the
 * claimed ones ({member, value, expires, due, version, items}), the
 * earliest score left, and how many there are.
 */
static const char claim_lua[] =
    "local now = tonumber(ARGV[1])\n"
    "local ks = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))\n"
    "local out = {}\n"
    "for _, k in ipairs(ks) do\n"
    "  local f = redis.call('HMGET', ARGV[4] .. k, 'v', 'x', 'd', 'n')\n"
    "  if f[1] then\n"
    "    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), k)\n"
    "    local items = {}\n"
    "    if string.sub(k, 1, 6) == 'group\\31' then\n"
    "      items = redis.call('LRANGE', ARGV[5] .. k, 0, -1)\n"
    "    end\n"
    "    out[#out + 1] = {k, f[1], f[2] or '0', f[3] or '0', f[4] or '0', items}\n"
    "  else\n"
    "    redis.call('ZREM', KEYS[1], k)\n"
    "  end\n"
    "end\n"
    "local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
    "return {out, first[2] or '0', redis.call('ZCARD', KEYS[1])}\n";

/*
 * The console's listing. KEYS: the due set. ARGV: the most to list, the
 * prefix of hashes. Answers {member, due, value} of the soonest, and how
 * many there are.
 */
static const char list_lua[] =
    "local ks = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)\n"
    "local out = {}\n"
    "for _, k in ipairs(ks) do\n"
    "  local f = redis.call('HMGET', ARGV[2] .. k, 'v', 'd')\n"
    "  if f[1] then out[#out + 1] = {k, f[2] or '0', f[1]} end\n"
    "end\n"
    "return {out, redis.call('ZCARD', KEYS[1])}\n";

/*
 * The console's cancel or fire of one timer or digest. KEYS: the due set,
 * the key's hash, its items' list. ARGV: the member, "fire" or "cancel",
 * now. A cancel deletes the key (a group that read it live then conflicts,
 * as with any change); a fire makes it due now, for the next claim.
 * Answers 1, or 0 when there is no such key.
 */
static const char change_due_lua[] = "if not redis.call('HGET', KEYS[2], 'n') then\n"
                                     "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
                                     "  return 0\n"
                                     "end\n"
                                     "if ARGV[2] == 'fire' then\n"
                                     "  redis.call('HSET', KEYS[2], 'd', ARGV[3])\n"
                                     "  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])\n"
                                     "else\n"
                                     "  redis.call('DEL', KEYS[2], KEYS[3])\n"
                                     "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
                                     "end\n"
                                     "return 1\n";

enum { SCRIPT_COMMIT, SCRIPT_UNDO, SCRIPT_CLAIM, SCRIPT_LIST, SCRIPT_CHANGE_DUE, NSCRIPTS };

struct brm_shared {
    struct brm_state *state;
    struct brm_redis *redis;
    char *prefix;
    double lease;
    brm_shared_state_fn *state_fn;
    void *state_arg;
    struct brm_redis_script scripts[NSCRIPTS];
    const struct brm_redis_script *script_list[NSCRIPTS];
    uint64_t instance; /* random: markers of different instances differ */
    _Atomic uint64_t next_commit;

    pthread_mutex_t lock; /* guards what is below */
    char **stale;         /* markers answered, to be deleted */
    size_t nstale, capstale;
    int draining;          /* held bodies wait: later ones that use state are held too */
    long in_flight;        /* bodies being held, not yet in the journal */
    uint64_t holds_stored; /* bodies held and stored, ever */
    long held;             /* bodies held in the journal now */
    long unresolved;       /* commits whose outcome waits for Redis */
};

/* ---- keys ------------------------------------------------------------------ */

static void arg_key(struct brm_redis_req *q, const char *prefix, const char *kind,
                    const char *key) {
    struct brm_buf b;
    brm_buf_init(&b);
    brm_buf_printf(&b, "%s%s%s", prefix, kind, key);
    brm_redis_arg(q, b.data, b.len);
    brm_buf_reset(&b);
}

/* ---- life ------------------------------------------------------------------ */

static void on_redis_state(void *arg, int up, const char *why) {
    struct brm_shared *sh = arg;
    if (!up) { /* from now on, bodies that use state wait in the journal */
        pthread_mutex_lock(&sh->lock);
        sh->draining = 1;
        pthread_mutex_unlock(&sh->lock);
    }
    if (sh->state_fn) sh->state_fn(sh->state_arg, up, why);
}

struct brm_shared *brm_shared_new(struct brm_state *state, const struct brm_redis_cfg *cfg,
                                  const char *prefix, double lease, brm_shared_state_fn *fn,
                                  void *arg) {
    struct brm_shared *sh = brm_xcalloc(1, sizeof(*sh));
    sh->state = state;
    sh->prefix = brm_xstrdup(prefix);
    sh->lease = lease;
    sh->state_fn = fn;
    sh->state_arg = arg;
    brm_redis_script_init(&sh->scripts[SCRIPT_COMMIT], commit_lua);
    brm_redis_script_init(&sh->scripts[SCRIPT_UNDO], undo_lua);
    brm_redis_script_init(&sh->scripts[SCRIPT_CLAIM], claim_lua);
    brm_redis_script_init(&sh->scripts[SCRIPT_LIST], list_lua);
    brm_redis_script_init(&sh->scripts[SCRIPT_CHANGE_DUE], change_due_lua);
    for (int i = 0; i < NSCRIPTS; i++) sh->script_list[i] = &sh->scripts[i];
    if (getrandom(&sh->instance, sizeof(sh->instance), 0) != (ssize_t)sizeof(sh->instance))
        sh->instance = brm_time_mono_ns() ^ (uint64_t)brm_time_now();
    sh->next_commit = 1;
    pthread_mutex_init(&sh->lock, NULL);
    sh->redis = brm_redis_new(cfg, sh->script_list, NSCRIPTS, on_redis_state, sh);
    brm_state_set_shared(state);
    return sh;
}

int brm_shared_start(struct brm_shared *sh, struct brm_err *err) {
    return brm_redis_start(sh->redis, err);
}

void brm_shared_finish(struct brm_shared *sh) {
    brm_redis_finish(sh->redis);
}

void brm_shared_free(struct brm_shared *sh) {
    if (!sh) return;
    brm_redis_free(sh->redis);
    for (size_t i = 0; i < sh->nstale; i++) free(sh->stale[i]);
    free(sh->stale);
    free(sh->prefix);
    pthread_mutex_destroy(&sh->lock);
    free(sh);
}

int brm_shared_wait(struct brm_shared *sh, double seconds) {
    return brm_redis_wait(sh->redis, seconds);
}

int brm_shared_up(const struct brm_shared *sh) {
    return brm_redis_up(sh->redis);
}

/* ---- commits ---------------------------------------------------------------- */

struct commit {
    struct brm_shared *sh;
    struct brm_state_txn *txn;
    struct brm_state_change *changes;
    size_t n;
    char *marker;
    brm_shared_commit_fn *fn;
    void *arg;
    int told_pending;
};

static int change_flags(const struct brm_state_change *c) {
    int f = 0;
    if (c->read) f |= 1;
    if (c->read && c->read_live) f |= 2;
    if (c->write) f |= 4;
    if (c->write && !c->value) f |= 8;
    if (c->is_due) f |= 16;
    if (c->is_group) f |= 32;
    if (c->write && c->group_fresh) f |= 64;
    return f;
}

/* The commit of C as a request. */
static struct brm_redis_req *commit_request(struct commit *c) {
    struct brm_shared *sh = c->sh;
    struct brm_redis_req *q = brm_redis_req_new();
    brm_redis_eval(q, &sh->scripts[SCRIPT_COMMIT], (int)(3 + 2 * c->n));
    brm_redis_arg_str(q, c->marker);
    arg_key(q, sh->prefix, "ver", "");
    arg_key(q, sh->prefix, "due", "");
    for (size_t i = 0; i < c->n; i++) {
        arg_key(q, sh->prefix, "s:", c->changes[i].key);
        arg_key(q, sh->prefix, "i:", c->changes[i].key);
    }
    brm_redis_arg_num(q, brm_time_now());
    brm_redis_arg_int(q, MARKER_TTL);
    brm_redis_arg_int(q, (long long)c->n);
    pthread_mutex_lock(&sh->lock);
    size_t m = sh->nstale < MAX_STALE ? sh->nstale : MAX_STALE;
    brm_redis_arg_int(q, (long long)m);
    for (size_t i = 0; i < m; i++) {
        char *k = sh->stale[--sh->nstale];
        brm_redis_arg_str(q, k);
        free(k);
    }
    pthread_mutex_unlock(&sh->lock);
    for (size_t i = 0; i < c->n; i++) {
        const struct brm_state_change *x = &c->changes[i];
        brm_redis_arg_str(q, x->key);
        brm_redis_arg_int(q, change_flags(x));
        brm_redis_arg_int(q, (long long)x->read_version);
        brm_redis_arg_str(q, x->value ? x->value : "");
        brm_redis_arg_num(q, x->expires);
        brm_redis_arg_num(q, x->due);
        brm_redis_arg_int(q, (long long)x->nitems);
        for (size_t k = 0; k < x->nitems; k++) brm_redis_arg_str(q, x->items[k]);
    }
    q->retry = 1; /* the marker tells a second run that the first one happened */
    return q;
}

static const char *reply_str(const redisReply *r) {
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) ? r->str : NULL;
}

static double reply_num(const redisReply *r) {
    const char *s = reply_str(r);
    if (s) return strtod(s, NULL);
    return r && r->type == REDIS_REPLY_INTEGER ? (double)r->integer : 0;
}

/* Reads a key's content {member?, value, expires, due, version, items}
 * from the elements of R from FROM on into the cache, as KEY. */
static void cache_from(struct brm_state *s, const char *key, const redisReply *r, size_t from) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements < from + 5) return;
    const char *value = reply_str(r->element[from]);
    const redisReply *items = r->element[from + 4];
    size_t n = items->type == REDIS_REPLY_ARRAY ? items->elements : 0;
    const char **v = brm_xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        v[i] = reply_str(items->element[i]) ? items->element[i]->str : "";
    brm_state_cache_put(s, key, value, reply_num(r->element[from + 1]),
                        reply_num(r->element[from + 2]), (uint64_t)reply_num(r->element[from + 3]),
                        v, n);
    free(v);
}

/* The versions list "v1,v2,..." the commit wrote, into C's keys. */
static void take_versions(struct commit *c, const char *list) {
    uint64_t *v = brm_xcalloc(c->n + 1, sizeof(*v));
    const char *p = list;
    for (size_t i = 0; i < c->n && p && *p; i++) {
        char *end;
        v[i] = strtoull(p, &end, 10);
        p = *end == ',' ? end + 1 : NULL;
    }
    brm_state_set_versions(c->txn, c->changes, v, c->n);
    free(v);
}

static void commit_free(struct commit *c) {
    brm_state_changes_free(c->changes, c->n);
    free(c->marker);
    free(c);
}

/* The commit's answer (on the client's thread). */
static void commit_done(struct brm_redis_req *q) {
    struct commit *c = q->arg;
    struct brm_shared *sh = c->sh;
    const redisReply *r = q->reply;
    enum brm_shared_outcome out = BRM_SHARED_DOWN;
    const char *word =
        q->status == BRM_REDIS_REPLY && r->type == REDIS_REPLY_ARRAY && r->elements >= 1
            ? reply_str(r->element[0])
            : NULL;
    if (q->status == BRM_REDIS_LOST) out = BRM_SHARED_LOST;
    if (word && (strcmp(word, "ok") == 0 || strcmp(word, "applied") == 0) && r->elements == 2) {
        take_versions(c, reply_str(r->element[1]) ? r->element[1]->str : "");
        pthread_mutex_lock(&sh->lock); /* answered: a later commit deletes the marker */
        if (sh->nstale == sh->capstale) {
            sh->capstale = sh->capstale ? sh->capstale * 2 : 64;
            sh->stale = brm_xrealloc(sh->stale, sh->capstale * sizeof(char *));
        }
        sh->stale[sh->nstale++] = c->marker;
        c->marker = NULL;
        pthread_mutex_unlock(&sh->lock);
        out = BRM_SHARED_OK;
    } else if (word && strcmp(word, "conflict") == 0) {
        out = BRM_SHARED_CONFLICT;
    }
    /* An error reply (a script that failed: a bad argument, out of memory)
     * is as good as unreachable: nothing was applied. */
    int wanted = 0;
    if (out != BRM_SHARED_OK) {
        wanted = brm_state_release(c->txn, 0);
        for (size_t i = 1; out == BRM_SHARED_CONFLICT && i < r->elements; i++) {
            const redisReply *k = r->element[i];
            if (k->type != REDIS_REPLY_ARRAY || k->elements < 6) continue;
            long long at = k->element[0]->integer;
            if (at >= 1 && (size_t)at <= c->n) cache_from(sh->state, c->changes[at - 1].key, k, 1);
        }
        for (size_t i = 0; out == BRM_SHARED_LOST && i < c->n; i++)
            brm_state_cache_forget(sh->state, c->changes[i].key);
    }
    brm_shared_commit_fn *fn = c->fn;
    void *arg = c->arg;
    commit_free(c);
    brm_redis_req_free(q);
    fn(arg, out, wanted);
}

/* The commit's answer was lost with the connection: it goes again. */
static void commit_lost(struct brm_redis_req *q) {
    struct commit *c = q->arg;
    if (c->told_pending) return;
    c->told_pending = 1;
    c->fn(c->arg, BRM_SHARED_PENDING, 0);
}

void brm_shared_commit(struct brm_shared *sh, struct brm_state_txn *t, brm_shared_commit_fn *fn,
                       void *arg) {
    struct commit *c = brm_xcalloc(1, sizeof(*c));
    c->sh = sh;
    c->txn = t;
    c->fn = fn;
    c->arg = arg;
    c->n = brm_state_changes(t, &c->changes);
    c->marker = brm_xasprintf("%stxn:%016llx:%llu", sh->prefix, (unsigned long long)sh->instance,
                              (unsigned long long)atomic_fetch_add(&sh->next_commit, 1));
    struct brm_redis_req *q = commit_request(c);
    q->done = commit_done;
    q->lost = commit_lost;
    q->arg = c;
    brm_redis_call(sh->redis, q);
}

/* ---- undo ------------------------------------------------------------------- */

struct undo {
    struct brm_shared *sh;
    struct brm_state_txn *txn;
    struct brm_state_change *changes;
    size_t n;
    void (*wake)(void *arg);
    void *arg;
};

static void undo_done(struct brm_redis_req *q) {
    struct undo *u = q->arg;
    int wanted = brm_state_release(u->txn, 0);
    for (size_t i = 0; i < u->n; i++) brm_state_cache_forget(u->sh->state, u->changes[i].key);
    if (wanted && u->wake) u->wake(u->arg);
    brm_state_changes_free(u->changes, u->n);
    free(u);
    brm_redis_req_free(q);
}

void brm_shared_undo(struct brm_shared *sh, struct brm_state_txn *t, void (*wake)(void *arg),
                     void *arg) {
    struct undo *u = brm_xcalloc(1, sizeof(*u));
    u->sh = sh;
    u->txn = t;
    u->wake = wake;
    u->arg = arg;
    u->n = brm_state_changes(t, &u->changes);
    struct brm_redis_req *q = brm_redis_req_new();
    size_t written = 0;
    for (size_t i = 0; i < u->n; i++) written += u->changes[i].write;
    brm_redis_eval(q, &sh->scripts[SCRIPT_UNDO], (int)(2 + 2 * written));
    arg_key(q, sh->prefix, "ver", "");
    arg_key(q, sh->prefix, "due", "");
    for (size_t i = 0; i < u->n; i++) {
        if (!u->changes[i].write) continue;
        arg_key(q, sh->prefix, "s:", u->changes[i].key);
        arg_key(q, sh->prefix, "i:", u->changes[i].key);
    }
    brm_redis_arg_int(q, (long long)written);
    for (size_t i = 0; i < u->n; i++) {
        const struct brm_state_change *x = &u->changes[i];
        if (!x->write) continue;
        int flags = (x->old_value ? 1 : 0) | (x->old_group ? 2 : 0) | (x->old_same ? 4 : 0) |
                    (x->is_due ? 16 : 0) | (x->is_group ? 32 : 0);
        brm_redis_arg_str(q, x->key);
        brm_redis_arg_int(q, flags);
        brm_redis_arg_int(q, (long long)x->version); /* what the commit gave it */
        brm_redis_arg_str(q, x->old_value ? x->old_value : "");
        brm_redis_arg_num(q, x->old_expires);
        brm_redis_arg_num(q, x->old_due);
        brm_redis_arg_int(q, (long long)x->old_nitems);
        for (size_t k = 0; !x->old_same && x->old_items && k < x->old_nitems; k++)
            brm_redis_arg_str(q, x->old_items[k]);
    }
    q->done = undo_done;
    q->arg = u;
    brm_redis_call(sh->redis, q);
}

/* ---- timers and digests due -------------------------------------------------- */

/* Q's answer when it is an array of N whose first element is a list (as
 * the claim's and the listing's scripts answer), else NULL. */
static const redisReply *list_answer(const struct brm_redis_req *q, size_t n) {
    const redisReply *r = q->reply;
    return q->status == BRM_REDIS_REPLY && r->type == REDIS_REPLY_ARRAY && r->elements == n &&
                   r->element[0]->type == REDIS_REPLY_ARRAY
               ? r
               : NULL;
}

struct claim {
    struct brm_shared *sh;
    brm_shared_claim_fn *fn;
    void *arg;
};

static void claim_done(struct brm_redis_req *q) {
    struct claim *c = q->arg;
    const redisReply *r = list_answer(q, 3);
    if (!r) {
        c->fn(c->arg, NULL, 0, -1, -1);
    } else {
        const redisReply *list = r->element[0];
        const char **keys = brm_xcalloc(list->elements + 1, sizeof(char *));
        size_t n = 0;
        for (size_t i = 0; i < list->elements; i++) {
            const redisReply *k = list->element[i];
            if (k->type != REDIS_REPLY_ARRAY || k->elements < 6 || !reply_str(k->element[0]))
                continue;
            cache_from(c->sh->state, k->element[0]->str, k, 1);
            keys[n++] = k->element[0]->str;
        }
        c->fn(c->arg, keys, n, reply_num(r->element[1]), (long)reply_num(r->element[2]));
        free(keys);
    }
    free(c);
    brm_redis_req_free(q);
}

void brm_shared_claim(struct brm_shared *sh, double now, size_t limit, brm_shared_claim_fn *fn,
                      void *arg) {
    struct claim *c = brm_xcalloc(1, sizeof(*c));
    c->sh = sh;
    c->fn = fn;
    c->arg = arg;
    struct brm_redis_req *q = brm_redis_req_new();
    brm_redis_eval(q, &sh->scripts[SCRIPT_CLAIM], 1);
    arg_key(q, sh->prefix, "due", "");
    brm_redis_arg_num(q, now);
    brm_redis_arg_num(q, sh->lease);
    brm_redis_arg_int(q, (long long)limit);
    arg_key(q, sh->prefix, "s:", "");
    arg_key(q, sh->prefix, "i:", "");
    q->done = claim_done;
    q->arg = c;
    brm_redis_call(sh->redis, q);
}

/* ---- the console's view ------------------------------------------------------------ */

struct listing {
    brm_shared_list_fn *fn;
    void *arg;
};

static void list_done(struct brm_redis_req *q) {
    struct listing *c = q->arg;
    const redisReply *r = list_answer(q, 2);
    if (!r) {
        c->fn(c->arg, NULL, 0, -1);
    } else {
        const redisReply *list = r->element[0];
        struct brm_shared_due *v = brm_xcalloc(list->elements + 1, sizeof(*v));
        size_t n = 0;
        for (size_t i = 0; i < list->elements; i++) {
            const redisReply *k = list->element[i];
            if (k->type != REDIS_REPLY_ARRAY || k->elements != 3 || !reply_str(k->element[0]) ||
                !reply_str(k->element[2]))
                continue;
            v[n++] = (struct brm_shared_due){ k->element[0]->str, reply_num(k->element[1]),
                                              k->element[2]->str };
        }
        c->fn(c->arg, v, n, (long)reply_num(r->element[1]));
        free(v);
    }
    free(c);
    brm_redis_req_free(q);
}

void brm_shared_list_due(struct brm_shared *sh, size_t limit, brm_shared_list_fn *fn, void *arg) {
    struct listing *c = brm_xcalloc(1, sizeof(*c));
    c->fn = fn;
    c->arg = arg;
    struct brm_redis_req *q = brm_redis_req_new();
    brm_redis_eval(q, &sh->scripts[SCRIPT_LIST], 1);
    arg_key(q, sh->prefix, "due", "");
    brm_redis_arg_int(q, (long long)limit);
    arg_key(q, sh->prefix, "s:", "");
    q->done = list_done;
    q->arg = c;
    brm_redis_call(sh->redis, q);
}

struct change_due {
    struct brm_shared *sh;
    char *key;
    int fire;
    brm_shared_changed_fn *fn;
    void *arg;
};

static void change_due_done(struct brm_redis_req *q) {
    struct change_due *c = q->arg;
    const redisReply *r = q->reply;
    int result =
        q->status == BRM_REDIS_REPLY && r->type == REDIS_REPLY_INTEGER ? r->integer == 1 : -1;
    /* This instance's cache may hold it: its rules would take it for
     * armed (and conflict on commit); forgotten, they read it again. */
    if (result == 1 && !c->fire) brm_state_cache_forget(c->sh->state, c->key);
    c->fn(c->arg, result);
    free(c->key);
    free(c);
    brm_redis_req_free(q);
}

void brm_shared_change_due(struct brm_shared *sh, const char *key, int fire, double now,
                           brm_shared_changed_fn *fn, void *arg) {
    struct change_due *c = brm_xcalloc(1, sizeof(*c));
    c->sh = sh;
    c->key = brm_xstrdup(key);
    c->fire = fire;
    c->fn = fn;
    c->arg = arg;
    struct brm_redis_req *q = brm_redis_req_new();
    brm_redis_eval(q, &sh->scripts[SCRIPT_CHANGE_DUE], 3);
    arg_key(q, sh->prefix, "due", "");
    arg_key(q, sh->prefix, "s:", key);
    arg_key(q, sh->prefix, "i:", key);
    brm_redis_arg_str(q, key);
    brm_redis_arg_str(q, fire ? "fire" : "cancel");
    brm_redis_arg_num(q, now);
    q->done = change_due_done;
    q->arg = c;
    brm_redis_call(sh->redis, q);
}

/* ---- bodies held while Redis is away --------------------------------------------- */

int brm_shared_holding(struct brm_shared *sh) {
    pthread_mutex_lock(&sh->lock);
    int holding = sh->draining || !brm_redis_up(sh->redis);
    pthread_mutex_unlock(&sh->lock);
    return holding;
}

int brm_shared_hold_begin(struct brm_shared *sh, int force) {
    pthread_mutex_lock(&sh->lock);
    int hold = force || sh->draining || !brm_redis_up(sh->redis);
    if (hold) {
        sh->draining = 1;
        sh->in_flight++;
    }
    pthread_mutex_unlock(&sh->lock);
    return hold;
}

void brm_shared_hold_end(struct brm_shared *sh, int stored) {
    pthread_mutex_lock(&sh->lock);
    sh->in_flight--;
    if (stored) {
        sh->holds_stored++;
        sh->held++;
    }
    pthread_mutex_unlock(&sh->lock);
}

void brm_shared_set_draining(struct brm_shared *sh, long held) {
    pthread_mutex_lock(&sh->lock);
    sh->held = held;
    if (held) sh->draining = 1;
    pthread_mutex_unlock(&sh->lock);
}

uint64_t brm_shared_drain_mark(struct brm_shared *sh) {
    pthread_mutex_lock(&sh->lock);
    uint64_t mark = sh->holds_stored;
    pthread_mutex_unlock(&sh->lock);
    return mark;
}

int brm_shared_drain_end(struct brm_shared *sh, uint64_t mark) {
    pthread_mutex_lock(&sh->lock);
    int end = sh->in_flight == 0 && sh->holds_stored == mark && brm_redis_up(sh->redis);
    if (end) sh->draining = 0;
    pthread_mutex_unlock(&sh->lock);
    return end;
}

void brm_shared_released(struct brm_shared *sh, long n) {
    pthread_mutex_lock(&sh->lock);
    sh->held -= n;
    if (sh->held < 0) sh->held = 0;
    pthread_mutex_unlock(&sh->lock);
}

long brm_shared_held(struct brm_shared *sh) {
    pthread_mutex_lock(&sh->lock);
    long n = sh->held;
    pthread_mutex_unlock(&sh->lock);
    return n;
}

void brm_shared_unresolved_add(struct brm_shared *sh, long n) {
    pthread_mutex_lock(&sh->lock);
    sh->unresolved += n;
    pthread_mutex_unlock(&sh->lock);
}

long brm_shared_unresolved(struct brm_shared *sh) {
    pthread_mutex_lock(&sh->lock);
    long n = sh->unresolved;
    pthread_mutex_unlock(&sh->lock);
    return n;
}

int brm_shared_draining(struct brm_shared *sh) {
    pthread_mutex_lock(&sh->lock);
    int d = sh->draining;
    pthread_mutex_unlock(&sh->lock);
    return d;
}
