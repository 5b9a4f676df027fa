"""
Shared state across the processes of one server (C{--workers N}) and the
instances behind a load balancer (C{--redis URL}): see L{inkflow.state.base}
for the interface (L{SharedState}) and docs/operations.md for the design.

  - L{inkflow.state.memory}: one process (and the C{--workers} parent's store);
  - L{inkflow.state.workers}: the parent's store served over AMP
    (L{ParentStateService}), a worker's client (L{WorkersState}), and the
    whole server's metrics and health merged by the parent;
  - L{inkflow.state.redis}: Redis (txredisapi, Lua scripts, TTLs, timeouts);
  - L{inkflow.state.fallback}: the shared store with the process's own as the
    fallback (health C{degraded}, C{inkflow_state_*} metrics);
  - L{inkflow.state.aggregate}: the workers' metrics merged;
  - L{inkflow.state.build}: which store a process uses;
  - L{inkflow.state.chat}: the chat route's use of it.

How the composition root wires it (C{makeService}, one place):

  - the C{--workers} parent holds a L{MemoryState} served by a
    L{ParentStateService} (started before the L{WorkerSupervisor}, stopped
    after it), and passes each worker the socket's path (C{SOCKET_ENV}) and
    its slot (C{INKFLOW_WORKER_SLOT});
  - every serving process calls L{build_state} (memory; the parent's over
    AMP; or Redis, each with the process's memory as the fallback): the
    chat route gets C{SharedIdempotentChat(built.state, ...)}, the head's
    rate check and the WebSocket's upgrade C{built.state.rate_take}, the
    chat handler and the WebSocket C{SharedExecutions(built.state)}; a
    worker's C{/metrics} and C{/api/health} ask C{built.link} for the whole
    server's; health's C{state} section is C{built.fallback.snapshot()}
    (C{probe()} first, so an idle process recovers) and its status
    C{degraded} while it is not shared; C{StateCollector} adds
    C{inkflow_state_*} to C{/metrics}; the drain ends with
    C{built.state.close()}.
"""
