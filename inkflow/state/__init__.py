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

  - the C{--workers} parent::

        store = MemoryState(reactor, state_config(settings))
        parent_state = ParentStateService(store, reactor)
        parent_state.setServiceParent(top)          # before the WorkerSupervisor
        WorkerSupervisor(settings, reactor, state_socket=lambda: parent_state.path)

    and in C{WorkerSupervisor._command(slot)}: C{env[SOCKET_ENV] =
    state_socket()} and C{env["INKFLOW_WORKER_SLOT"] = str(slot)};

  - every serving process (one process, or a worker: C{inkflow/server/worker.py}
    pops C{SOCKET_ENV} and C{INKFLOW_WORKER_SLOT} from the environment and
    passes them in)::

        built = build_state(settings, reactor, environ={SOCKET_ENV: socket} if socket else {},
                            worker=slot, metrics_text=metrics.render,
                            health_snapshot=lambda: app.health_snapshot())
        if built.fallback is not None:
            metrics.registry.register(StateCollector(built.fallback))

    the routes get C{built.state}: C{SharedIdempotentChat(built.state, ...,
    client=...)} instead of C{IdempotentChat(IdempotencyStore(...))},
    C{await check_rate(built.state, rate_key(client))} instead of
    C{rate_limiter.check(...)}, C{note_execution(built.state, answer, index)}
    and C{await built.state.execution_lookup(id)} instead of the
    L{inkflow.n8n.executions.ExecutionMap}; C{/metrics} in a worker answers
    C{await built.link.scrape()} (its own text when that fails) and
    C{/api/health} adds C{await built.link.server_health()}; health's C{state}
    section is C{built.fallback.snapshot()} and its status C{degraded} while
    C{built.state.degraded} (the health reporter calls
    C{built.fallback.probe()} so an idle process recovers);
    C{InkFlowService.stopService} ends with
    C{built.state.close()} (and C{built.link.close()}).
"""
