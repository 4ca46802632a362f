"""parley's state in a database: SQLite in the data dir, or PostgreSQL shared by replicas.

``schema`` holds the tables and their numbered migrations, ``database`` the
engine, its transactions and the dialect rules, ``listen`` the wake-ups
(``LISTEN/NOTIFY``) one replica's new work sends to the others.
"""
