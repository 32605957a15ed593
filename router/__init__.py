"""loraplex.router"""
