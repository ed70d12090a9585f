"""autoseg.postprocess"""
