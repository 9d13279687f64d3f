"""Speculative decoding: cheap proposers draft k tokens, the target model verifies them in one forward.

ngram.py (prompt lookup) and draft_model.py (a smaller model sharing the tokenizer) propose;
rejection.py accepts exactly (greedy: the target's argmax; sampled: rejection sampling keeps p);
speculator.py attaches drafts to a scheduled batch's decode rows and turns the target's logits into
each row's accepted tokens. The scheduler rolls the K/V of rejected drafts back (scheduler._accept).
"""
