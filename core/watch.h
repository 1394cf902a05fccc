/*
 * watch: says when the config file, the rules or the scripts changed, for
 * hot reload. inotify on the folders involved (subfolders too), so that it
 * survives what editors and git do: write a temporary file and rename it
 * over the old one, delete and recreate a whole folder. Only changes that
 * matter count (*.lua files, the config file, the folders themselves), and
 * a burst of them (a git checkout, an editor's save) is one call, after
 * DEBOUNCE seconds without another. Depends on libevent, log, util.
 */
#ifndef BRM_WATCH_H
#define BRM_WATCH_H

#include <stddef.h>

#include "util.h"

struct event_base;
struct brm_watch;

/* A watch on BASE that calls CHANGED(ARG) after changes; NULL with ERR set
 * when inotify is not available. */
struct brm_watch *brm_watch_new(struct event_base *base, double debounce,
                                void (*changed)(void *arg), void *arg, struct brm_err *err);
void brm_watch_free(struct brm_watch *w);

/* Watches the N PATHS (files or folders, which may not exist yet) instead
 * of what it watched: call again after each reload, as folders may have
 * been replaced or moved. */
void brm_watch_set(struct brm_watch *w, const char *const *paths, size_t n);

#endif
