"""The accuracy suite runner (``tllib-jtln bench``) and its tables."""
