"""Real, throwaway directory services for tests: an MIT Kerberos realm and an OpenLDAP server.

See :mod:`tests.infra.kerberos`, :mod:`tests.infra.ldap` and the pytest fixtures in
:mod:`tests.infra.conftest_fixtures`.
"""
