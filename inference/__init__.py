"""autoseg.inference"""
