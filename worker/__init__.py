"""loraplex.worker"""
