"""Copies of a dask array's graph under new keys: read anew (:func:`cloned`), or read
only once other computations are done (:func:`bound`).

``dask.graph_manipulation.clone`` and ``bind`` do this, but since dask's tasks became
``GraphNode`` objects they rename a task's key in the graph and leave the object
with its old key and old inputs. The copy of a prior that was sliced or rolled (a
region cut with ``ds.sel``, a longitude put in order) then read the original's
chunks, dask's task fusion failed on it ("Cannot fuse tasks with multiple outputs"),
and a distributed cluster lost the renamed inputs. Here every task is substituted in
full. Dask versions before ``GraphNode`` have tuple tasks, which their ``clone`` and
``bind`` copy correctly: those are used there. What a cluster holds (a persisted
prior's futures) is shared by the copies, not copied: its data is in memory already.
"""

from __future__ import annotations

__all__ = ["bound", "cloned"]


def cloned(data, seed: str):
    """``data`` (a dask array) with its whole graph copied under keys made from
    ``seed``: computed, it reads and computes its chunks anew."""
    return _copied(data, seed, after=None)


def bound(data, parents: list, seed: str):
    """``data`` copied as :func:`cloned`, its root tasks (those reading the chunks)
    run only once every chunk of the dask collections ``parents`` is computed."""
    return _copied(data, seed, after=parents)


def _copied(data, seed: str, after: list | None):
    import dask.array as da
    from dask import core
    from dask.base import clone_key

    try:
        from dask._task_spec import (
            DataNode,
            Task,
            TaskRef,
            convert_legacy_graph,
        )
    except ImportError:  # tuple tasks: dask's own copies are right
        from dask.graph_manipulation import bind, clone

        return clone(data, seed=seed) if after is None else bind(data, after, seed=seed)

    def nodes(collection):  # its tasks, and what a cluster holds (futures) apart
        raw = dict(collection.__dask_graph__())
        tasks = convert_legacy_graph(raw)  # which drops the futures
        return tasks, {key: value for key, value in raw.items() if key not in tasks}

    graph, held = nodes(data)
    if any(key in held for key in core.flatten(data.__dask_keys__())):
        return data  # persisted on a cluster: in memory already, nothing to read anew
    renamed = {key: clone_key(key, seed) for key in graph}
    copied = dict(held)  # shared, under their own keys
    blocker = None
    if after is not None:
        from dask.graph_manipulation import checkpoint

        wait = checkpoint(*after)
        for part in nodes(wait):
            copied.update(part)
        blocker = TaskRef(wait.key)
    for key, node in graph.items():  # every node a GraphNode, once converted
        new_key = renamed[key]
        copy = node.substitute(renamed, key=new_key)
        if blocker is not None and not node.dependencies:  # a root: after the blocker
            if isinstance(node, Task):
                copy = Task(new_key, _call, blocker, node.func, *node.args, **node.kwargs)
            elif isinstance(node, DataNode):
                copy = Task(new_key, _value, blocker, node.value)
        copied[new_key] = copy
    return da.Array(copied, clone_key(data.name, seed), data.chunks, meta=data._meta)


def _call(_done, func, *args, **kwargs):
    """A root task's call, made once the blocker is done."""
    return func(*args, **kwargs)


def _value(_done, value):
    """A root's data, passed on once the blocker is done."""
    return value
