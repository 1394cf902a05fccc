/*
 * The config loader (core/config.h) on any file: brume.lua is written to a
 * folder of its own and loaded as `brume run` and `brume check` load it.
 * Either a config comes back that keeps the promises the rest of brume
 * relies on, or errors do, each with a message; nothing else (no crash,
 * no leak, whatever the Lua in the file does within its limits). There is
 * no loader for text in memory, so the file is the input.
 */
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "config.h"
#include "fuzz.h"
#include "log.h"

static char dir[] = "/tmp/brume-fuzz-config-XXXXXX";
static char *path, *secret_path;

static void cleanup(void) {
    unlink(path);
    unlink(secret_path);
    rmdir(dir);
    free(path);
    free(secret_path);
}

/* The folder, a file for file() to read, and the environment the example
 * configs ask env() for. */
static void setup(void) {
    MUST(mkdtemp(dir) != NULL);
    path = brm_path_join(dir, "brume.lua");
    secret_path = brm_path_join(dir, "secret.txt");
    FILE *f = fopen(secret_path, "w");
    MUST(f && fputs("from-a-file\n", f) >= 0 && fclose(f) == 0);
    static const char *const vars[] = { "MIST_WEBHOOK_SECRET", "SLACK_WEBHOOK_URL",
                                        "TEAMS_WORKFLOW_URL", "PAGERDUTY_ROUTING_KEY",
                                        "SERVICENOW_PASSWORD" };
    for (size_t i = 0; i < BRM_ARRAY_LEN(vars); i++)
        setenv(vars[i], i == 1 || i == 2 ? "https://hooks.example/x" : "fuzz-value-0123456789", 0);
    brm_log_setup(BRM_LOG_ERROR, BRM_LOG_LOGFMT);
    atexit(cleanup);
}

static void check_config(const struct brm_config *c) {
    MUST(c->workers >= 1 && c->workers <= BRM_MAX_WORKERS);
    MUST(c->nlisten >= 1 && c->data_dir && c->rules_dir && c->scripts_dir);
    MUST(!c->admin || c->admin_token || brm_addr_loopback(c->admin));
    for (size_t i = 0; i < c->nsources; i++) {
        const struct brm_source *s = &c->sources[i];
        MUST(s->name && s->path && s->path[0] == '/');
        MUST(s->insecure ? s->nsecrets == 0 : s->nsecrets >= 1 && s->nsecrets <= 2);
        MUST(s->max_body <= c->http.max_unverified);
        MUST(brm_config_source(c, s->name) == s);
    }
    for (size_t i = 0; i < c->ntargets; i++) MUST(c->targets[i].name && c->targets[i].kind);
    MUST(brm_config_target(c, BRM_HTTP_TARGET) != NULL);
}

static void check_errors(const struct brm_errors *errs) {
    MUST(errs->n > 0);
    for (size_t i = 0; i < errs->n; i++) MUST(errs->v[i].msg[0] != '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!path) setup();
    /* A new file each time: ext4 writes a file truncated to nothing back to
     * disk when it is closed, which cost a sixth of each run. */
    unlink(path);
    FILE *f = fopen(path, "wb");
    MUST(f && fwrite(data, 1, size, f) == size && fclose(f) == 0);
    struct brm_errors errs = { 0 };
    struct brm_config *c = brm_config_load(path, brm_api_open_for_config, NULL, &errs);
    if (c) {
        MUST(errs.n == 0 && c->nsources >= 1);
        check_config(c);
    } else {
        check_errors(&errs);
    }
    int loaded = c != NULL;
    brm_config_free(c);
    brm_errors_reset(&errs);
    if (loaded) return 0; /* brume check would take the same path */
    /* brume check: a config as far as it could be read, errors or not. */
    c = brm_config_check(path, brm_api_open_for_config, NULL, &errs);
    if (!c) check_errors(&errs);
    brm_config_free(c);
    brm_errors_reset(&errs);
    return 0;
}
