"""Tooling, not protocol: a seeded discrete-event network running the real engine and client, a TCP
Reno reference on the same links, fairness experiments and a small in-memory app.

``network`` (:class:`~trickles.sim.network.Sim`, links, hosts, ``transfer``), ``reno`` (the Reno
flow), ``fairness`` (Trickles-vs-Reno helpers), ``memapp`` (:class:`~trickles.sim.memapp.MemoryApp`).
The protocol modules in :mod:`trickles` never import this package.
"""
