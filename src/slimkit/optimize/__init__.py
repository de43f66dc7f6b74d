"""Profile, advise and search: slimkit optimize"""
