"""The paper's tables regenerated from what was measured, beside what the paper claims and what the baselines'
own authors published, with statistics and verdicts.

For each data set: a table of every method at the one shared recipe (the headline, like for like), the
attention CNN against each baseline and against its ablation with a verdict per claimed gain, and -- when the
search track ran -- the same at each method's searched recipe, beside the search's budget and outcome. A
measured column is only put under a paper column when the data set *is* that benchmark (the embedded set
never is). ``tables.md`` (and ``index.html``, the same as a page that opens offline with its pictures),
``tables.csv``, ``summary.json`` (everything, comparisons included), ``metrics.json`` (the headline per data set:
the one DVC metrics file) and an MLflow run per data set (``report | <dataset>``).

One name per number: "test top-1" is the top-1 accuracy on the test split. The per-epoch curve is the same
measurement after each epoch (the training loop logs it as ``val_top1``; in the train stage its "val" split is
the test split), and its last point is the evaluated test top-1.

The modules, in the order the stage uses them (``build.make_report``): ``read`` (the stages' outputs, typed),
``record`` (the one record of the numbers, and its projections: summary.json, tables.csv, the headline,
metrics.json), ``markdown`` (words and tables), ``figures``, ``study`` (the attention study's section),
``page`` (the HTML page), ``runs`` (MLflow).
"""
