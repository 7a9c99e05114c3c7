#  SPDX-License-Identifier: BSD-3-Clause
"""SPDK rpc.py plugin for ilog: one subcommand per bdev_ilog_* JSON-RPC method.

Load it with --plugin; Python finds it on PYTHONPATH:

    PYTHONPATH=scripts spdk-rpc --plugin rpc_ilog bdev_ilog_snapshot ilog0 -n before-upgrade
    PYTHONPATH=/path/to/ilog/scripts /path/to/spdk/scripts/rpc.py --plugin rpc_ilog bdev_ilog_get_volumes ilog0

Works with the PyPI `spdk` package's spdk-rpc and with SPDK's own
scripts/rpc.py. The methods' parameters and results are documented in
rpc/src/ilog.rs; the server validates them, this plugin only maps options to
parameters (options left out are not sent, so the server's defaults apply).
"""

import json
import re


def _print(result):
    """Prints a result as SPDK's print_dict/print_json do: JSON, strings bare.

    Defined here rather than imported because SPDK has moved those helpers
    between modules across releases. A dry-run or batch-mode client returns
    None (it prints or collects the request itself): nothing to print then.
    """
    if result is None:
        return
    if isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result, indent=2))


def _bdev_names(text):
    """A list of bdev names given as SPDK's rpc.py takes bdev_raid_create's
    --base-bdevs: one argument, the names separated by whitespace (here
    commas too), e.g. "Malloc0 Malloc1" or Malloc0,Malloc1."""
    return [n for n in re.split(r'[\s,]+', text) if n]


def _call(args, method, **params):
    return args.client.call(method, {k: v for k, v in params.items() if v is not None})


def spdk_rpc_plugin_initialize(subparsers):
    """Adds the bdev_ilog_* subcommands (the entry point rpc.py's --plugin calls)."""

    def bdev_ilog_create(args):
        _print(_call(args, 'bdev_ilog_create',
                     name=args.name,
                     base_bdev_name=args.base_bdev_name,
                     stripe_size_kib=args.stripe_size_kib,
                     segment_size_kib=args.segment_size_kib,
                     log_percent=args.log_percent,
                     max_volumes=args.max_volumes,
                     replay_window_mib=args.replay_window_mib,
                     primary_bdev_names=args.primary_bdev_names))

    p = subparsers.add_parser(
        'bdev_ilog_create', help='Create an ilog bdev on a base bdev',
        description="""Create an ilog bdev on an existing base bdev. The --*-size-kib,
        --log-percent, --max-volumes and --replay-window-mib options choose how the base bdev is formatted.
        Prints the new bdev's name. Example: bdev_ilog_create -b Malloc0 -p ilog0 --log-percent 30;
        with mirrored primaries: bdev_ilog_create -b Malloc0 -p ilog0 --primary-bdev-names "Aio1 Aio2".""")
    p.add_argument('-b', '--base-bdev-name', help='Name of the existing base bdev', required=True)
    p.add_argument('-p', '--name', help='Name of the new ilog bdev', required=True)
    p.add_argument('--stripe-size-kib', type=int,
                   help='LBA space owned by one core, in KiB (default 1024)')
    p.add_argument('--segment-size-kib', type=int, help='Log segment size, in KiB (default 4096)')
    p.add_argument('--log-percent', type=int,
                   help="The log's share of the base bdev, 1-95: room for snapshot deltas plus a write "
                        "buffer; the rest is the volume (default 18)")
    p.add_argument('--max-volumes', type=int, help='Most snapshot volumes at once (default 1024)')
    p.add_argument('--replay-window-mib', type=int,
                   help='Most log a mount after a crash scans and replays, in MiB (default 256)')
    p.add_argument('--primary-bdev-names', type=_bdev_names,
                   help='Bdevs that mirror the current image (the base bdev then holds the log): '
                        'names separated by whitespace or commas, in quotes, e.g. "Aio1 Aio2" '
                        '(default: none; a re-open finds those recorded)')
    p.set_defaults(func=bdev_ilog_create)

    def bdev_ilog_delete(args):
        _call(args, 'bdev_ilog_delete', name=args.name)

    p = subparsers.add_parser(
        'bdev_ilog_delete', help='Delete an ilog bdev',
        description="""Delete an ilog bdev.""")
    p.add_argument('name', help='ilog bdev name')
    p.set_defaults(func=bdev_ilog_delete)

    def bdev_ilog_get_bdevs(args):
        _print(_call(args, 'bdev_ilog_get_bdevs', name=args.name))

    p = subparsers.add_parser(
        'bdev_ilog_get_bdevs', help='Display ilog bdevs',
        description="""Display every ilog bdev, or the one named: base bdev, block size, size,
        cores and snapshot volumes.""")
    p.add_argument('-b', '--name', help='Name of one ilog bdev (default: all)')
    p.set_defaults(func=bdev_ilog_get_bdevs)

    def bdev_ilog_snapshot(args):
        _print(_call(args, 'bdev_ilog_snapshot', name=args.name, snapshot_name=args.snapshot_name))

    p = subparsers.add_parser(
        'bdev_ilog_snapshot', help='Take a snapshot volume of an ilog bdev',
        description="""Seal the current state of an ilog bdev as a read-only snapshot volume,
        durably. Prints its volume id and the bdev it is exported as (<name>@<volume id>).""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('-n', '--snapshot-name',
                   help='Volume id: 1-78 characters of [A-Za-z0-9._:-] (default snap-<n>)')
    p.set_defaults(func=bdev_ilog_snapshot)

    def bdev_ilog_get_volumes(args):
        _print(_call(args, 'bdev_ilog_get_volumes', name=args.name))

    p = subparsers.add_parser(
        'bdev_ilog_get_volumes', help='Display the snapshot volumes of an ilog bdev',
        description="""Display the snapshot volumes of an ilog bdev: volume id, bdev name,
        log partition and creation time (Unix seconds).""")
    p.add_argument('name', help='ilog bdev name')
    p.set_defaults(func=bdev_ilog_get_volumes)

    def bdev_ilog_delete_volume(args):
        _call(args, 'bdev_ilog_delete_volume', name=args.name, volume=args.volume)

    p = subparsers.add_parser(
        'bdev_ilog_delete_volume', help='Delete a snapshot volume of an ilog bdev',
        description="""Delete a snapshot volume. Newer volumes and the current image are
        unchanged; its log entries merge into the next partition.""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('volume', help='Volume id, e.g. snap-1')
    p.set_defaults(func=bdev_ilog_delete_volume)

    def bdev_ilog_log_read(args):
        _print(_call(args, 'bdev_ilog_log_read', name=args.name, cursor=args.cursor,
                     count=args.count, with_data=args.with_data))

    p = subparsers.add_parser(
        'bdev_ilog_log_read', help="Read entries of an ilog bdev's log",
        description="""Read up to COUNT log entries in log order, from CURSOR on. Prints the
        entries and next_cursor: pass it back with -c to continue.""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('-c', '--cursor', type=int, help='Where to start (default 0: the oldest entry)')
    p.add_argument('-n', '--count', type=int, required=True, help='Most entries to return, 1-4096')
    p.add_argument('--with-data', action='store_true', default=None,
                   help="Include each data entry's blocks, base64-encoded")
    p.set_defaults(func=bdev_ilog_log_read)

    def bdev_ilog_get_stats(args):
        _print(_call(args, 'bdev_ilog_get_stats', name=args.name))

    p = subparsers.add_parser(
        'bdev_ilog_get_stats', help='Display statistics of an ilog bdev',
        description="""Display an ilog bdev's geometry and usage: block size, volume size,
        log segments (total and free), snapshot volumes and the open partition.""")
    p.add_argument('name', help='ilog bdev name')
    p.set_defaults(func=bdev_ilog_get_stats)

    def bdev_ilog_compact(args):
        _print(_call(args, 'bdev_ilog_compact', name=args.name, volume=args.volume, mode=args.mode,
                     background=args.background))

    p = subparsers.add_parser(
        'bdev_ilog_compact', help='Compact the log of an ilog bdev',
        description="""Compact in place (rewrite the live blocks of the volume's partition, or of
        every partition, and free the old segments) or into the baseline (drain the partitions
        up to the volume, the oldest if none is named, the whole log without volumes, into the
        baseline region now; older volumes are retired). Prints true when done, or the job id
        with --background.""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('-v', '--volume', help='Volume id (default: every partition, or the oldest volume)')
    p.add_argument('-m', '--mode', choices=['in_place', 'baseline'], help='How (default in_place)')
    p.add_argument('--background', action='store_true', default=None,
                   help='Return at once with a job id; progress shows in bdev_ilog_get_stats')
    p.set_defaults(func=bdev_ilog_compact)

    def bdev_ilog_set_policy(args):
        try:
            policy = json.loads(args.policy)
        except ValueError as e:
            raise SystemExit(f'bdev_ilog_set_policy: the policy is not JSON: {e}')
        _call(args, 'bdev_ilog_set_policy', name=args.name, policy=policy)

    p = subparsers.add_parser(
        'bdev_ilog_set_policy', help='Set the storage-management policy of an ilog bdev',
        description="""Set the policy (a JSON object, see the README; {} for none). It is stored
        durably with the bdev. An invalid policy is refused with the field named.""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('policy', help='The policy, JSON, e.g. \'{"snapshot": {"interval_s": 3600}}\'')
    p.set_defaults(func=bdev_ilog_set_policy)

    def bdev_ilog_get_policy(args):
        _print(_call(args, 'bdev_ilog_get_policy', name=args.name))

    p = subparsers.add_parser(
        'bdev_ilog_get_policy', help='Display the storage-management policy of an ilog bdev',
        description="""Display the policy of an ilog bdev ({} for none).""")
    p.add_argument('name', help='ilog bdev name')
    p.set_defaults(func=bdev_ilog_get_policy)

    def bdev_ilog_event(args):
        _call(args, 'bdev_ilog_event', name=args.name, event=args.event)

    p = subparsers.add_parser(
        'bdev_ilog_event', help='Deliver a named event to the policy of an ilog bdev',
        description="""Run the actions the policy binds to EVENT under events.on.""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('event', help='Event name, e.g. backup-done')
    p.set_defaults(func=bdev_ilog_event)

    def bdev_ilog_diff(args):
        _print(_call(args, 'bdev_ilog_diff', name=args.name, volume=args.volume,
                     base_volume=args.base_volume, lba_start=args.lba_start, lba_count=args.lba_count))

    p = subparsers.add_parser(
        'bdev_ilog_diff', help='Display what changed between two volumes of an ilog bdev',
        description="""Display the extents of VOLUME that differ from the older --base-volume
        (everything VOLUME maps without one), merged and in LBA order:
        [{"lba", "num_blocks", "kind": "data" | "zero"}]. Costs the size of the change.""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('volume', help='Volume id')
    p.add_argument('-b', '--base-volume', help='An older volume id (default: none, a full diff)')
    p.add_argument('--lba-start', type=int, help='First block of the range (default 0)')
    p.add_argument('--lba-count', type=int, help='Blocks in the range (default: to the end)')
    p.set_defaults(func=bdev_ilog_diff)

    def bdev_ilog_copy(args):
        _print(_call(args, 'bdev_ilog_copy', name=args.name, volume=args.volume,
                     base_volume=args.base_volume, lba_start=args.lba_start, lba_count=args.lba_count,
                     target=args.target, resume_token=args.resume_token))

    p = subparsers.add_parser(
        'bdev_ilog_copy', help='Copy a volume, or what changed since an older one, to a tertiary volume',
        description="""Write a copy stream (checksummed, self-describing) of VOLUME, or of what changed
        since --base-volume, to TARGET: a bdev name, or an absolute file path. Runs in the background:
        prints {"job": id}; bdev_ilog_get_stats shows its progress, state and resume token.""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('volume', help='Volume id')
    p.add_argument('target', help='A bdev name, or an absolute path for a file')
    p.add_argument('-b', '--base-volume', help='An older volume id: copy only what changed since')
    p.add_argument('--lba-start', type=int, help='First block of the range (default 0)')
    p.add_argument('--lba-count', type=int, help='Blocks in the range (default: to the end)')
    p.add_argument('-r', '--resume-token', help='Go on with an interrupted copy to the same target')
    p.set_defaults(func=bdev_ilog_copy)

    def bdev_ilog_restore(args):
        _print(_call(args, 'bdev_ilog_restore', name=args.name, source=args.source,
                     resume_token=args.resume_token))

    p = subparsers.add_parser(
        'bdev_ilog_restore', help='Apply a copy stream to an ilog bdev or any bdev',
        description="""Apply the copy stream in SOURCE (a bdev name, or an absolute file path) to NAME.
        Into an ilog bdev the stream becomes a snapshot volume with the source's volume id, and the
        current image equals it; onto any other bdev, the volume's image. Restore a full stream first,
        then the incrementals in order. Runs in the background: prints {"job": id}.""")
    p.add_argument('name', help='The bdev to restore into')
    p.add_argument('source', help='A bdev name, or an absolute path for a file')
    p.add_argument('-r', '--resume-token', help='Go on with an interrupted restore')
    p.set_defaults(func=bdev_ilog_restore)

    def bdev_ilog_rebuild_primary(args):
        _print(_call(args, 'bdev_ilog_rebuild_primary', name=args.name,
                     primary_bdev_name=args.primary_bdev_name, full=args.full))

    p = subparsers.add_parser(
        'bdev_ilog_rebuild_primary', help='Resync a primary of an ilog bdev, or replace a failed one',
        description="""Resync PRIMARY_BDEV_NAME: a primary that returns gets the blocks written since
        it failed; a bdev that is not a primary replaces the one degraded primary and is rebuilt
        whole, as is any with --full. Prints true once the rebuild is recorded; its progress shows
        in bdev_ilog_get_stats (primaries: state, rebuild_done_blocks, rebuild_total_blocks).""")
    p.add_argument('name', help='ilog bdev name')
    p.add_argument('-p', '--primary-bdev-name', required=True, help='The primary, or its replacement')
    p.add_argument('--full', action='store_true', default=None, help='Copy every block, not only those it lacks')
    p.set_defaults(func=bdev_ilog_rebuild_primary)

    def bdev_ilog_get_jobs(args):
        _print(_call(args, 'bdev_ilog_get_jobs', name=args.name))

    p = subparsers.add_parser(
        'bdev_ilog_get_jobs', help='Display background jobs (compactions, copies, restores)',
        description="""Display every background job, or those of one bdev: its id, bdev, kind,
        state, and for a copy or a restore its progress and resume token.""")
    p.add_argument('-b', '--name', help='Only the jobs of this bdev')
    p.set_defaults(func=bdev_ilog_get_jobs)
