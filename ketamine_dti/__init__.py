"""ketamine-dti: does 24-hour gray-matter MD change track the antidepressant response to ketamine?"""

__version__ = "0.1.0"
