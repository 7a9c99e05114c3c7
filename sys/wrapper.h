/* The SPDK headers ilog's bindings are generated from. */
#include <spdk/stdinc.h>
#include <spdk/bdev.h>
#include <spdk/bdev_module.h>
#include <spdk/env.h>
#include <spdk/json.h>
#include <spdk/jsonrpc.h>
#include <spdk/log.h>
#include <spdk/rpc.h>
#include <spdk/string.h>
#include <spdk/thread.h>
#include <spdk/util.h>
